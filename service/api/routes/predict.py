"""POST /predict and /predict/batch: an approved tag, its confidence and a status."""

from __future__ import annotations

import asyncio
import logging
import time

from fastapi import APIRouter, HTTPException, status
from pydantic import BaseModel, ConfigDict, Field, field_validator

from service.api.answers import answers
from service.api.deps import ClientKey, StateDep
from service.api.state import AppState
from service.config import Settings
from service.entities import PredictionCreate, PredictionPublic, ShadowPrediction
from service.entities.common import StorableStr, has_visible, new_id, storable_text
from service.ml.dataset import composed, item_text, text_hash
from service.ml.serving import Scored

router = APIRouter(tags=["predict"])
NOT_SERVING = answers(
    {
        503: "No production model is served yet, or too many items wait to be scored (then "
        "with Retry-After)"
    }
)
log = logging.getLogger(__name__)


TitleText = storable_text(min_length=1)


class Item(BaseModel):
    model_config = ConfigDict(
        extra="ignore",
        str_strip_whitespace=True,
        json_schema_extra={
            "examples": [
                {
                    "title": "YOLOv8 for counting cars",
                    "description": "Real-time object detection on traffic video.",
                }
            ]
        },
    )

    title: TitleText = Field(description="Non-empty title")
    description: StorableStr = Field(
        default="", description="Short description; may be missing, null or empty"
    )

    @field_validator("description", mode="before")
    @classmethod
    def _null_is_empty(cls, value: object) -> object:
        # Clients that serialise a missing field as null mean "no description", as the
        # training data's null does; any other non-string is still a type error.
        return "" if value is None else value

    @field_validator("title")
    @classmethod
    def _visible(cls, value: str) -> str:
        # Whitespace is stripped; a title of only invisible characters (zero-width spaces,
        # controls) is as empty, and would be logged and queued for review as a blank item.
        if not has_visible(value):
            raise ValueError("must contain a visible character")
        return value


class BatchRequest(BaseModel):
    items: list[Item]


class BatchResponse(BaseModel):
    results: list[PredictionPublic]


def check_lengths(items: list[Item], settings: Settings, *, batch: bool) -> None:
    """Configurable limits, so they are checked here rather than in the static schema. In a
    batch, the message names the item (also in a batch of one). Characters are counted in the
    composed form the model reads (NFC): "é" sent as a letter and a combining accent, as macOS
    sends it, is one character, as it is on the page, not two."""
    for i, item in enumerate(items):
        where = f"items[{i}]." if batch else ""
        for field, text, limit in (
            ("title", item.title, settings.max_title_chars),
            ("description", item.description, settings.max_description_chars),
        ):
            if len(text) > limit and (length := len(composed(text))) > limit:
                raise HTTPException(
                    status.HTTP_422_UNPROCESSABLE_CONTENT,
                    f"{where}{field} has {length} characters; the limit is {limit}",
                )


def _record(state: AppState, item: Item, scored: Scored, latency_ms: float) -> PredictionPublic:
    row = PredictionCreate(
        id=new_id(),
        text_hash=text_hash(item.title, item.description),
        title=item.title,
        description=item.description,
        tag=scored.tag,
        confidence=scored.confidence,
        scores=scored.scores,
        status=scored.status,
        model_version=scored.model_version,
        latency_ms=round(latency_ms, 3),
    )
    state.log.record(row)
    state.metrics.predictions.labels(row.model_version, row.tag, row.status.value).inc()
    return PredictionPublic(
        prediction_id=row.id,
        tag=row.tag,
        confidence=row.confidence,
        scores=row.scores,
        status=row.status,
        model_version=row.model_version,
    )


async def _shadow(state: AppState, texts: list[str], results: list[PredictionPublic]) -> None:
    """Score the same texts with the shadow candidate and log agreement; never raises."""
    shadow = state.predictor.shadow
    if shadow is None:
        return
    try:
        scored = await asyncio.to_thread(state.predictor.score, texts, shadow)
    except Exception:
        state.shadow_errors += 1  # on the event loop, like every other write of it
        log.exception("shadow scoring with %s failed", shadow.version)
        return
    for s, r in zip(scored, results, strict=True):
        state.log.record_shadow(
            ShadowPrediction(
                prediction_id=r.prediction_id,
                model_version=shadow.version,
                tag=s.tag,
                confidence=s.confidence,
                agrees=s.tag == r.tag,
            )
        )


async def _predict(state: AppState, items: list[Item]) -> list[PredictionPublic]:
    started = time.perf_counter()
    texts = [item_text(i.title, i.description) for i in items]
    scored = await state.batcher.predict(texts)
    latency_ms = (time.perf_counter() - started) * 1000 / len(items)
    results = [_record(state, i, s, latency_ms) for i, s in zip(items, scored, strict=True)]
    if state.predictor.shadow is not None:
        task = asyncio.create_task(_shadow(state, texts, results))
        state.background.add(task)
        task.add_done_callback(state.background.discard)
    return results


@router.post("/predict", response_model=PredictionPublic, responses=NOT_SERVING)
async def predict(item: Item, _caller: ClientKey, state: StateDep) -> PredictionPublic:
    """Tag one item. `status` is `auto` when confident enough to accept, else `review`."""
    # The batcher and settings come from the state, not dependencies of their own: each
    # dependency is a node FastAPI solves per request, on the event loop (see deps.allow).
    check_lengths([item], state.settings, batch=False)
    return (await _predict(state, [item]))[0]


@router.post("/predict/batch", response_model=BatchResponse, responses=NOT_SERVING)
async def predict_batch(body: BatchRequest, _caller: ClientKey, state: StateDep) -> BatchResponse:
    """Tag up to `max_batch_items` items; results come back in the same order."""
    if not body.items:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "items must not be empty")
    settings = state.settings
    if len(body.items) > settings.max_batch_items:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"{len(body.items)} items; a batch holds at most {settings.max_batch_items}",
        )
    check_lengths(body.items, settings, batch=True)
    return BatchResponse(results=await _predict(state, body.items))
