"""Logged predictions over HTTP: one prediction by id, with what people made of it since."""

from __future__ import annotations

import asyncio
import logging
import time

from fastapi import APIRouter
from sqlmodel import Session

from service import unwritten
from service.api.answers import answers
from service.api.deps import AnyKey, SessionDep, StateDep
from service.api.state import AppState
from service.crud.predictions import get_prediction, prediction_record
from service.entities import Prediction, PredictionRecord
from service.entities.common import id_made_at
from service.entities.feedback import PredictionIdText
from service.errors import NotFoundError, UnavailableError

router = APIRouter(prefix="/predictions", tags=["predict"])
log = logging.getLogger(__name__)
# How often to look for a prediction another API process may be writing (service.unwritten).
OTHER_PROCESS_POLL_S = 0.05
# What `find_prediction` answers, for the routes that use it.
UNKNOWN_PREDICTION = "No prediction with this id (or it was pruned)"
UNWRITTEN_PREDICTIONS = (
    "The prediction log cannot be written now, predictions answered while the database was "
    "away are still being written back, or another API process holds predictions it has not "
    "written yet: retry shortly"
)


async def find_prediction(state: AppState, session: Session, prediction_id: str) -> Prediction:
    """The stored prediction; one still in the write-behind buffer is flushed first, and one
    made moments ago is waited for: another API process may have answered it and not written
    it yet. While predictions spilled in an outage are written back, or another process
    holds predictions it could not write since before this one was made (`service.unwritten`),
    one not found may be among them: a 503 to retry, not a 404."""
    try:
        return await asyncio.to_thread(get_prediction, session, prediction_id=prediction_id)
    except NotFoundError:
        # Flushing also waits for a batch that is being written right now.
        try:
            await asyncio.to_thread(state.log.flush)
        except Exception as exc:
            log.exception("prediction log flush failed while looking up %s", prediction_id)
            raise UnavailableError("the prediction log cannot be written now; retry") from exc
    deadline = _written_by(state, prediction_id)
    while True:
        try:
            return await asyncio.to_thread(get_prediction, session, prediction_id=prediction_id)
        except NotFoundError:
            if time.time() < deadline:
                pass
            elif state.log.writing_back:
                # It may be one of the predictions an outage sent to the spill file, written
                # back a few batches a flush: not known to be unknown, and soon written.
                raise UnavailableError(
                    "predictions answered while the database was away are still being "
                    "written; retry shortly"
                ) from None
            elif await _held_elsewhere(state, prediction_id):
                raise UnavailableError(
                    "another API process holds predictions it has not written yet (its "
                    "database was away), maybe this one; retry shortly"
                ) from None
            else:
                raise
        await asyncio.sleep(OTHER_PROCESS_POLL_S)


def _written_by(state: AppState, prediction_id: str) -> float:
    """When a prediction with this id, answered by any API process, is in the database at the
    latest (its id says when it was made; processes share the flush interval). An id dated
    in the future is not waited for longer than one just made."""
    made = id_made_at(prediction_id)
    if made is None:
        return 0.0
    wait = state.settings.log_flush_interval_s + unwritten.GRACE_S
    return min(made, time.time()) + wait


async def _held_elsewhere(state: AppState, prediction_id: str) -> bool:
    """Whether another API process may hold this prediction unwritten, late (its database
    away, or its backlog being written): it said so in Redis (`service.unwritten`)."""
    made = id_made_at(prediction_id)
    if made is None:
        return False
    return await asyncio.to_thread(unwritten.may_be_held, state.redis, made=made)


@router.get(
    "/{prediction_id}",
    response_model=PredictionRecord,
    responses=answers({404: UNKNOWN_PREDICTION, 503: UNWRITTEN_PREDICTIONS}),
)
async def read_prediction(
    prediction_id: PredictionIdText, session: SessionDep, state: StateDep, _caller: AnyKey
) -> PredictionRecord:
    """A prediction as it was answered and logged, the label a person has since given its
    content (if any), and its latest review task. 404 for an unknown id; 422 for one over 64
    characters, as `POST /feedback` refuses it (a 3,000-character id was a 404 echoing it
    whole)."""
    prediction = await find_prediction(state, session, prediction_id)
    return await asyncio.to_thread(prediction_record, session, prediction=prediction)
