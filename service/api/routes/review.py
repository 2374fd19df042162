"""The review queue over HTTP: claim a task, label / skip / release / reopen it, queue and
reviewer stats, and agreement on the overlap sample."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException, Response, status
from pydantic import BaseModel, ConfigDict, Field
from redis.exceptions import RedisError
from rq.registry import FailedJobRegistry
from sqlmodel import Session

from service.api.answers import answers
from service.api.deps import (
    KeysDep,
    ReviewerKey,
    RowId,
    SessionDep,
    SettingsDep,
    StateDep,
    TagsDep,
)
from service.api_keys import KeyRing, name_key
from service.config import MAX_NAME_CHARS, Caller
from service.crud import feedback as feedback_crud
from service.crud import labels as labels_crud
from service.crud import leases, overlap
from service.crud import review as review_crud
from service.crud import reviewers as reviewers_crud
from service.entities import AgreementStats, Label, LabelPublic, ReviewerStats
from service.entities.common import as_utc, day_start, storable_text, utcnow
from service.entities.review import ReviewReason, ReviewTask, ReviewTaskPublic, Suggestion
from service.tags import TagSet

router = APIRouter(prefix="/review", tags=["review"])
log = logging.getLogger(__name__)
ReviewerText = storable_text(min_length=1, max_length=MAX_NAME_CHARS, name=True)
TagText = storable_text(min_length=1, max_length=100)
MAX_KEPT = 100  # tasks a release may leave leased: one per other tab of the reviewer
TaskId = Annotated[int, Field(ge=1, le=2**31 - 1)]
# What `acting_reviewer` refuses, for every route that names the reviewer acting.
NOT_THIS_NAME = (
    "A personal key acting under another name, or a shared key under the name of one who "
    "holds a personal key"
)
UNKNOWN_TASK = "No review task with this id"
# Why a route refuses a task (409), route by route: a label of a task shed or whose lease ran
# out is kept, while a renewal of a lease that ran out is refused, so the reasons differ.
NOT_YOURS = (
    "The task is not this reviewer's to act on: leased to another reviewer, labelled, or shed "
    "from the queue"
)
NOT_YOURS_TO_LABEL = (
    "The task is not this reviewer's to label: leased to another reviewer, labelled by another, "
    "or waiting for another reviewer's opinion (a label of a task shed from the queue or whose "
    "lease ran out is kept)"
)
NOT_YOURS_TO_RENEW = (
    "The lease is not this reviewer's to renew: the task is leased to another reviewer, "
    "labelled, shed, given back or skipped, or its lease ran out (a claim put the task back "
    "in the queue; a label of it is still kept)"
)
TASK_ANSWERS = answers({403: NOT_THIS_NAME, 404: UNKNOWN_TASK, 409: NOT_YOURS})


class ReviewerBody(BaseModel):
    """Who is acting. A personal key (`reviewer/ann:KEY`) says it, and `reviewer` may be left
    out; with a key shared by the role, each request names the person."""

    model_config = ConfigDict(str_strip_whitespace=True)

    reviewer: ReviewerText | None = None


def acting_reviewer(
    session: Session, caller: Caller, body: ReviewerBody | None, keys: KeyRing
) -> str:
    """The name a review action is recorded under: the key's own, or, when the key is shared,
    the one the request gives; either as its person was first recorded ("ANN" and "ａｎｎ" act
    as the "Ann" who came first, so one person is one reviewer: also with the personal key
    `reviewer/ann` she was issued after acting as "Ann" with the shared one). A personal key
    cannot act under another person's name (its holder's in any spelling is hers), nor a
    shared key as the holder of a personal one (403)."""
    declared = body.reviewer if body is not None else None
    if caller.name is None:
        if declared is None:
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT,
                "name the reviewer: this key is shared by its role, so the body must say who "
                'acts ({"reviewer": "your name"})',
            )
        if name_key(declared) in keys.personal_reviewers():
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                f"{declared!r} has a personal key: only that key acts as {declared!r}",
            )
        return reviewers_crud.recorded_name(session, name=declared)
    if declared is not None and name_key(declared) != name_key(caller.name):
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            f"this key is {caller.name}'s: it cannot act as {declared!r}",
        )
    return reviewers_crud.recorded_name(session, name=caller.name)


class LabelBody(ReviewerBody):
    tag: TagText


class ReviewStats(BaseModel):
    """Queue counts; `failed_jobs` is None (with a note) when Redis cannot be asked."""

    open: int
    leased: int
    labeled_today: int
    shed: int  # taken out of the queue unreviewed by its bound, ever (a late label included)
    shed_now: int  # of those, still out of the queue without a label
    by_reason: dict[str, int]
    by_stage: dict[str, int]  # open and leased tasks by the answer they wait for
    outbox_pending: int
    outbox_stopped: int  # sent MAX_SENDS times, each job lost: wait for `db resend-outbox`
    failed_jobs: int | None
    note: str | None = None


def suggestion_shown(task: ReviewTask, *, tags: TagSet) -> Suggestion:
    """The model's suggestion as a reviewer sees it. An audit item shows none (no tag, no
    scores): its label measures how often the tag accepted automatically was right, and a
    reviewer shown that tag leans towards it, and the precision figure with them. A tag
    retired since the task was made is not offered either: the page would suggest a tag it
    has no button for, and that a label cannot carry (its score stays, as the model gave it)."""
    if task.reason == ReviewReason.AUDIT:
        return Suggestion(tag=None, scores={})
    suggested = task.suggestion_tag if task.suggestion_tag in tags else None
    return Suggestion(tag=suggested, scores=task.suggestion_scores)


def task_public(session: Session, task: ReviewTask, *, tags: TagSet) -> ReviewTaskPublic:
    """What a reviewer sees of a task (never the table row itself)."""
    assert task.id is not None
    expires = as_utc(task.lease_expires_at) if task.lease_expires_at else None
    return ReviewTaskPublic(
        task_id=task.id,
        title=task.title,
        description=task.description,
        suggestion=suggestion_shown(task, tags=tags),
        duplicate_of=task.duplicate_of,
        duplicate_tag=task.duplicate_tag,
        duplicate_title=duplicate_title(session, task=task),
        reason=task.reason,
        stage=task.stage,
        earlier_labels=overlap.earlier_labels(session, task=task),
        # An audit item is labelled blind to what users claim of it too, for the same reason.
        reports=[]
        if task.reason == ReviewReason.AUDIT
        else feedback_crud.reports_for_task(session, task_id=task.id),
        priority=round(task.priority, 6),
        lease_expires_at=expires,
        lease_remaining_s=None if expires is None else lease_remaining_s(expires, now=utcnow()),
    )


def duplicate_title(session: Session, *, task: ReviewTask) -> str | None:
    """The title of the labelled item `task` reads like: `duplicate_of` is its label's id, and
    the page showed that number as an item's ("Looks like item #4"), which named another item
    (task 4) and not the look-alike."""
    if task.duplicate_of is None:
        return None
    label = session.get(Label, task.duplicate_of)
    return label.title if label is not None else None


def lease_remaining_s(expires: datetime, *, now: datetime) -> float:
    """Seconds from `now` until a lease `expires` (0 once it has run out), to the millisecond."""
    return round(max(0.0, (expires - now).total_seconds()), 3)


@router.post(
    "/claim",
    response_model=ReviewTaskPublic,
    responses={
        204: {"description": "Nothing to review"},
        **answers({403: NOT_THIS_NAME, 409: "The queue is too contended right now: retry"}),
    },
)
def claim(
    session: SessionDep,
    settings: SettingsDep,
    tags: TagsDep,
    caller: ReviewerKey,
    keys: KeysDep,
    body: ReviewerBody | None = None,
) -> ReviewTaskPublic | Response:
    """Lease the most useful open task to the reviewer for `review_lease_s` seconds."""
    reviewer = acting_reviewer(session, caller, body, keys)
    task = leases.claim(session, reviewer=reviewer, lease_s=settings.review_lease_s)
    if task is None:
        return Response(status_code=status.HTTP_204_NO_CONTENT)
    return task_public(session, task, tags=tags)


@router.get("/stats", response_model=ReviewStats)
def review_stats(session: SessionDep, state: StateDep, _caller: ReviewerKey) -> ReviewStats:
    """Queue counts, outbox rows waiting for Redis or stopped, and failed labelling jobs."""
    counts = review_crud.stats(session, now=utcnow())
    try:
        failed: int | None = FailedJobRegistry(queue=state.queues.labeling).count
        note = None
    except RedisError as exc:
        log.warning("review stats: Redis unreachable (%s)", exc)
        failed, note = None, f"Redis is unreachable: {type(exc).__name__}"
    return ReviewStats(**counts, failed_jobs=failed, note=note)


class ReviewerList(BaseModel):
    reviewers: list[ReviewerStats]


@router.get("/reviewers", response_model=ReviewerList)
def review_reviewers(session: SessionDep, _caller: ReviewerKey) -> ReviewerList:
    """Each reviewer's labels: in all and today, agreement with the model's suggestion, and
    how many another reviewer later changed."""
    return ReviewerList(reviewers=labels_crud.reviewer_stats(session, since=day_start(utcnow())))


@router.get("/agreement", response_model=AgreementStats)
def review_agreement(session: SessionDep, _caller: ReviewerKey) -> AgreementStats:
    """The overlap sample (`TAGFLOW_REVIEW_OVERLAP_SHARE`): contents labelled by two reviewers
    independently, how often they agree (share, Fleiss' kappa, per tag), and how many tasks
    wait for a second opinion or for a decision between two."""
    return overlap.agreement_stats(session)


@router.post(
    "/{task_id}/label",
    response_model=LabelPublic,
    status_code=status.HTTP_201_CREATED,
    responses={
        200: {"description": "The same label was saved already (a retry): the saved one"},
        **answers(
            {
                403: NOT_THIS_NAME,
                404: UNKNOWN_TASK,
                409: f"{NOT_YOURS_TO_LABEL}; or this reviewer labelled it already with "
                "another tag, the label saved then in `label` (reopen the task to change it)",
            }
        ),
    },
)
def label_task(
    task_id: RowId,
    body: LabelBody,
    response: Response,
    session: SessionDep,
    settings: SettingsDep,
    tags: TagsDep,
    caller: ReviewerKey,
    keys: KeysDep,
) -> LabelPublic:
    """The reviewer's answer: an approved tag. It supersedes any earlier label of the content.

    Sent again after the first answer was lost, it saves nothing twice: the same tag answers
    200 with the label saved the first time; another tag is a 409 that carries the saved label
    (`label`), which an undo (reopen) lets its reviewer change."""
    reviewer = acting_reviewer(session, caller, body, keys)
    try:
        row = review_crud.label(
            session,
            task_id=task_id,
            tag=body.tag,
            reviewer=reviewer,
            tags=tags,
            holdout_share=settings.label_holdout_share,
            overlap_share=settings.review_overlap_share,
        )
    except review_crud.LabelledAlready as already:
        if already.label.tag != body.tag:
            raise
        response.status_code = status.HTTP_200_OK
        row = already.label
    return LabelPublic.of(row)


@router.post("/{task_id}/skip", response_model=ReviewTaskPublic, responses=TASK_ANSWERS)
def skip_task(
    task_id: RowId,
    session: SessionDep,
    tags: TagsDep,
    caller: ReviewerKey,
    keys: KeysDep,
    body: ReviewerBody | None = None,
) -> ReviewTaskPublic:
    """Not sure: back to the queue, slightly lower, offered to other reviewers first."""
    reviewer = acting_reviewer(session, caller, body, keys)
    task = review_crud.skip(session, task_id=task_id, reviewer=reviewer)
    return task_public(session, task, tags=tags)


@router.post("/{task_id}/release", response_model=ReviewTaskPublic, responses=TASK_ANSWERS)
def release_task(
    task_id: RowId,
    session: SessionDep,
    tags: TagsDep,
    caller: ReviewerKey,
    keys: KeysDep,
    body: ReviewerBody | None = None,
) -> ReviewTaskPublic:
    """Give the lease back unchanged (page closed)."""
    reviewer = acting_reviewer(session, caller, body, keys)
    task = leases.release(session, task_id=task_id, reviewer=reviewer)
    return task_public(session, task, tags=tags)


@router.post(
    "/{task_id}/renew",
    response_model=ReviewTaskPublic,
    responses=answers({403: NOT_THIS_NAME, 404: UNKNOWN_TASK, 409: NOT_YOURS_TO_RENEW}),
)
def renew_task(
    task_id: RowId,
    session: SessionDep,
    settings: SettingsDep,
    tags: TagsDep,
    caller: ReviewerKey,
    keys: KeysDep,
    body: ReviewerBody | None = None,
) -> ReviewTaskPublic:
    """Keep the lease: `review_lease_s` more seconds from now, for its holder only (the page
    renews while its reviewer is at the item; 409 once the task is not theirs)."""
    reviewer = acting_reviewer(session, caller, body, keys)
    task = leases.renew(
        session, task_id=task_id, reviewer=reviewer, lease_s=settings.review_lease_s
    )
    return task_public(session, task, tags=tags)


class ReleaseBody(ReviewerBody):
    """Who gives their leases back, and the tasks to leave them (`keep`): the ones the same
    reviewer's other tabs show, which stay theirs."""

    keep: list[TaskId] = Field(default_factory=list, max_length=MAX_KEPT)


class Released(BaseModel):
    """The tasks a release of everything held gave back to the queue (ids, ascending)."""

    released: list[int]


@router.post("/release", response_model=Released, responses=answers({403: NOT_THIS_NAME}))
def release_held(
    session: SessionDep,
    caller: ReviewerKey,
    keys: KeysDep,
    body: ReleaseBody | None = None,
) -> Released:
    """Give back every lease the reviewer holds (the page changes hands): also a task whose
    claim was saved and its answer lost, which the page cannot name. Tasks in `keep` (shown
    in the reviewer's other tabs) stay leased to them."""
    reviewer = acting_reviewer(session, caller, body, keys)
    keep = body.keep if body is not None else []
    return Released(released=leases.release_held(session, reviewer=reviewer, keep=keep))


@router.post(
    "/{task_id}/reopen",
    response_model=ReviewTaskPublic,
    responses=answers(
        {
            403: NOT_THIS_NAME,
            404: UNKNOWN_TASK,
            409: "Nothing of this reviewer's to undo (the task's last word is not their "
            "label), another open task holds the same content, or it changed meanwhile",
        }
    ),
)
def reopen_task(
    task_id: RowId,
    session: SessionDep,
    settings: SettingsDep,
    tags: TagsDep,
    caller: ReviewerKey,
    keys: KeysDep,
    body: ReviewerBody | None = None,
) -> ReviewTaskPublic:
    """Undo: lease a task this reviewer labelled back to them; their next label replaces it."""
    reviewer = acting_reviewer(session, caller, body, keys)
    task = review_crud.reopen(
        session, task_id=task_id, reviewer=reviewer, lease_s=settings.review_lease_s
    )
    return task_public(session, task, tags=tags)
