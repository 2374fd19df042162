"""Logged predictions over HTTP: one prediction by id, with what people made of it since."""

from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter
from sqlmodel import Session

from service.api.deps import AnyKey, SessionDep, StateDep
from service.api.state import AppState
from service.crud.predictions import get_prediction, prediction_record
from service.entities import Prediction, PredictionRecord
from service.entities.common import StorableStr
from service.errors import NotFoundError, UnavailableError

router = APIRouter(prefix="/predictions", tags=["predict"])
log = logging.getLogger(__name__)


async def find_prediction(state: AppState, session: Session, prediction_id: str) -> Prediction:
    """The stored prediction; one still in the write-behind buffer is flushed first."""
    try:
        return await asyncio.to_thread(get_prediction, session, prediction_id=prediction_id)
    except NotFoundError:
        # Flushing also waits for a batch that is being written right now.
        try:
            await asyncio.to_thread(state.log.flush)
        except Exception as exc:
            log.exception("prediction log flush failed while looking up %s", prediction_id)
            raise UnavailableError("the prediction log cannot be written now; retry") from exc
        return await asyncio.to_thread(get_prediction, session, prediction_id=prediction_id)


@router.get("/{prediction_id}", response_model=PredictionRecord)
async def read_prediction(
    prediction_id: StorableStr, session: SessionDep, state: StateDep, _caller: AnyKey
) -> PredictionRecord:
    """A prediction as it was answered and logged, the label a person has since given its
    content (if any), and its latest review task. 404 for an unknown id."""
    prediction = await find_prediction(state, session, prediction_id)
    return await asyncio.to_thread(prediction_record, session, prediction=prediction)
