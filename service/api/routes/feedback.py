"""User feedback over HTTP: report a wrong tag, follow what became of the report."""

from __future__ import annotations

import asyncio
import logging
import time

from fastapi import APIRouter, HTTPException, Response, status
from pydantic import BaseModel
from redis.exceptions import RedisError
from sqlmodel import Session

from service import quotas
from service.api.answers import answers
from service.api.deps import AnyKey, KeyId, RefusalsDep, RowId, SessionDep, StateDep
from service.api.routes.predictions import (
    UNKNOWN_PREDICTION,
    UNWRITTEN_PREDICTIONS,
    find_prediction,
)
from service.api.state import AppState
from service.config import Caller
from service.crud import feedback as feedback_crud
from service.entities import Feedback, FeedbackCreate, FeedbackPublic, FeedbackStatus, Prediction
from service.errors import NotFoundError
from service.logs import RequestRefusals

router = APIRouter(prefix="/feedback", tags=["feedback"])
log = logging.getLogger(__name__)


class FeedbackReceipt(BaseModel):
    """What POST /feedback returns."""

    feedback_id: int
    status: FeedbackStatus


def _store(
    state: AppState, session: Session, body: FeedbackCreate, prediction: Prediction
) -> tuple[Feedback, bool]:
    settings = state.settings
    return feedback_crud.create_feedback(
        session,
        body=body,
        prediction=prediction,
        tags=state.tags,
        trust=settings.trust_feedback,
        holdout_share=settings.label_holdout_share,
        audit_share=settings.audit_share,
    )


async def _within_quota(
    state: AppState, refusals: RequestRefusals, *, caller: Caller, key_id: str
) -> float | None:
    """429 if the key has sent its quota of reports this minute; else the time the report
    was counted at (None: not counted). With Redis away the report is taken, and the log says
    so: a lost report is worse than one over the quota."""
    limit = state.settings.feedback_per_key_per_minute
    if limit <= 0:
        return None  # no quota: no trip to Redis
    now = time.time()
    try:
        wait = await asyncio.to_thread(
            quotas.take, state.redis, action="feedback", key_id=key_id, limit=limit, now=now
        )
    except RedisError as exc:
        reason = f"feedback quota not checked: Redis is unavailable ({exc}); reports taken"
        refusals.refused(logging.WARNING, "feedback quota: redis", reason)
        return None
    if wait is None:
        return now
    refusals.refused(
        logging.WARNING,
        f"feedback quota: {key_id}",
        f"feedback quota: {caller.describe()} (key {key_id}) sent over {limit} reports a minute",
    )
    raise HTTPException(
        status.HTTP_429_TOO_MANY_REQUESTS,
        f"this key has sent {limit} reports this minute, its quota; retry in {wait} s",
        headers={"Retry-After": str(wait)},
    )


async def _give_back(state: AppState, *, key_id: str, counted_at: float | None) -> None:
    """Return the quota a report was counted against when it was not stored: it turned out
    to repeat one (or contradict one) recorded meanwhile (a retry sent while its first attempt
    was in flight passed the repeat check before the first was stored, and took quota twice),
    or the database failed to store it."""
    if counted_at is None:
        return
    try:
        await asyncio.to_thread(
            quotas.give_back, state.redis, action="feedback", key_id=key_id, now=counted_at
        )
    except RedisError:
        log.warning("feedback quota: Redis is unavailable; a report not stored stays counted")


@router.post(
    "",
    response_model=FeedbackReceipt,
    status_code=status.HTTP_201_CREATED,
    responses={
        200: {"description": "This reporter already reported this prediction so"},
        **answers(
            {
                404: UNKNOWN_PREDICTION,
                409: "This reporter already reported this prediction, as another tag or "
                "with another comment",
                429: "The key has sent its quota of reports this minute: retry after "
                "Retry-After seconds",
                503: UNWRITTEN_PREDICTIONS,
            }
        ),
    },
)
async def post_feedback(
    body: FeedbackCreate,
    response: Response,
    session: SessionDep,
    state: StateDep,
    caller: AnyKey,
    key_id: KeyId,
    refusals: RefusalsDep,
) -> FeedbackReceipt:
    """Report that a prediction's tag is wrong; `correct_tag` must be an approved tag.

    201 with the new report. Idempotent: the same (prediction_id, reporter) again answers
    200 with the first report's body and stores nothing (a retry may leave the comment out);
    with another `correct_tag` or another comment, 409 (a report is not changed; anonymous
    reports of a prediction count as one reporter's).
    Unknown prediction: 404; tag not approved: 422; over the key's quota of reports a
    minute (TAGFLOW_FEEDBACK_PER_KEY_PER_MINUTE): 429 with Retry-After; a repeat (200) and a
    report the database could not store (503) use none of the quota; a report of an unknown
    prediction (404) uses it. The report waits for a reviewer (`received`, then
    `in_review`) unless feedback is trusted, when it becomes a label at once (`confirmed`) if
    the content has none.
    """
    recorded = await asyncio.to_thread(
        feedback_crud.recorded_report, session, body=body, tags=state.tags
    )
    if recorded is not None:
        # A repeat adds no review work: answered as the first report was, whatever the quota.
        assert recorded.id is not None
        response.status_code = status.HTTP_200_OK
        return FeedbackReceipt(feedback_id=recorded.id, status=recorded.status)
    # A report of an unknown prediction is counted too (404 after the count): it may wait for
    # another API process's log, and unbounded ones would probe for prediction ids.
    counted_at = await _within_quota(state, refusals, caller=caller, key_id=key_id)
    try:
        prediction = await find_prediction(state, session, body.prediction_id)
        feedback, created = await asyncio.to_thread(_store, state, session, body, prediction)
    except NotFoundError:
        raise  # an unknown prediction: counted, as said above
    except Exception:
        # Not stored: another tag or comment than a report recorded since the check above (a
        # 409, which would have used no quota had that report been stored first), or the
        # database down or locked (a 503 the client is told to retry: each retry took quota,
        # and the key's next real report was a 429), or any other failure of ours (a 500).
        await _give_back(state, key_id=key_id, counted_at=counted_at)
        raise
    assert feedback.id is not None
    if not created:
        # The same report, stored since the check above by a concurrent request (its first
        # attempt, still in flight when this retry came): a repeat, which uses no quota.
        await _give_back(state, key_id=key_id, counted_at=counted_at)
        response.status_code = status.HTTP_200_OK
    elif feedback.status == FeedbackStatus.RECEIVED:
        # Its review request waits in the outbox, stored with the report: the relay task
        # hands it to RQ after this answer, so a hung Redis does not hold the reporter.
        state.wake_relay()
    return FeedbackReceipt(feedback_id=feedback.id, status=feedback.status)


@router.get(
    "/{feedback_id}",
    response_model=FeedbackPublic,
    responses=answers({404: "No report with this id"}),
)
def read_feedback(feedback_id: RowId, session: SessionDep, _caller: AnyKey) -> FeedbackPublic:
    """A report's status, its review task, and the final tag once a reviewer has decided."""
    feedback = feedback_crud.get_feedback(session, feedback_id=feedback_id)
    return feedback_crud.feedback_public(session, feedback=feedback)
