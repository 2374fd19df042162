"""User feedback: reports that a prediction's tag was wrong, and what became of them.

A report is not trusted by default: it is stored with an outbox row that asks the labelling
queue for a human review (reason `user_report`). With `trust_feedback` it becomes a label
right away when the content has none and no review task is open for it; against a label
already given (by a reviewer, or by an earlier report), for content in review, or for content
of the audit sample (which is labelled blind), it goes to review like any other report, and
agreeing with a final label it is confirmed by it.
"""

from __future__ import annotations

import logging

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from service.crud import labels as labels_crud
from service.crud.predictions import REVIEW_KIND, in_audit_sample, review_payload
from service.entities import (
    Feedback,
    FeedbackCreate,
    FeedbackPublic,
    FeedbackStatus,
    Label,
    LabelSource,
    OutboxItem,
    Prediction,
)
from service.entities.common import as_utc
from service.entities.feedback import SETTLED
from service.entities.review import ReviewReason, ReviewTask, UserReport
from service.errors import ConflictError, InvalidInputError, NotFoundError
from service.ml.dataset import composed
from service.tags import TagSet

log = logging.getLogger(__name__)

FEEDBACK_REVIEWER = "feedback"  # the reviewer name on trusted labels without a reporter
# Reports a task shows its reviewer. Any client key can report one prediction under as many
# reporter names as it likes: 3,000 reports of 2,000 characters made every claim, renewal and
# skip of that task a 6.1 MB answer, and the page drew them all.
MAX_REPORTS_SHOWN = 20


def find_feedback(session: Session, *, prediction_id: str, reporter: str) -> Feedback | None:
    """The report a reporter already made about a prediction, if any."""
    return session.exec(
        select(Feedback).where(
            Feedback.prediction_id == prediction_id, Feedback.reporter == reporter
        )
    ).first()


def _reporter(body: FeedbackCreate) -> str:
    """Who reports, as stored and looked up: "" for anyone anonymous, and a name in Unicode's
    composed form (`composed`), so that the same name sent in the other form is the same
    reporter."""
    return composed(body.reporter or "").strip()


def recorded_report(session: Session, *, body: FeedbackCreate, tags: TagSet) -> Feedback | None:
    """The report `body` repeats (a retry whose answer was lost), None for a new one; a tag
    not approved is an InvalidInputError, and a report that contradicts the recorded one a
    ConflictError. Needs no prediction: a repeat is answered before the key's quota is taken.
    A repeat of a report whose tag was retired since is still a repeat (200, its status as it
    is now): refused as unapproved, the report it repeats read as not stored."""
    reporter = _reporter(body)
    existing = find_feedback(session, prediction_id=body.prediction_id, reporter=reporter)
    if existing is not None and existing.correct_tag == body.correct_tag:
        return _repeated(existing, body=body)
    if body.correct_tag not in tags:
        raise InvalidInputError(f"tag {body.correct_tag!r} is not in the approved list")
    return None if existing is None else _repeated(existing, body=body)


def _trust(session: Session, *, feedback: Feedback, prediction: Prediction, share: float) -> None:
    """Turn a trusted report into the content's current label (flushes, does not commit)."""
    label = labels_crud.append_label(
        session,
        text_hash=prediction.text_hash,
        title=prediction.title,
        description=prediction.description,
        tag=feedback.correct_tag,
        reviewer=feedback.reporter or FEEDBACK_REVIEWER,
        holdout_share=share,
        source=LabelSource.FEEDBACK,
    )
    feedback.status = FeedbackStatus.CONFIRMED
    feedback.label_id = label.id
    session.add(feedback)


def create_feedback(
    session: Session,
    *,
    body: FeedbackCreate,
    prediction: Prediction,
    tags: TagSet,
    trust: bool,
    holdout_share: float,
    audit_share: float = 0.0,
) -> tuple[Feedback, bool]:
    """Store a report; returns `(feedback, created)`.

    Idempotent per (prediction, reporter): a repeated report returns the first one with
    `created=False` and writes nothing; one naming another tag, or bringing another comment,
    is a ConflictError. The
    feedback row and its outbox row (or, when trusted, its label) are committed in one
    transaction. A trusted report does not label content of the audit sample (`audit_share`):
    that waits for the audit's blind label.
    """
    existing = recorded_report(session, body=body, tags=tags)
    if existing is not None:
        return existing, False
    reporter = _reporter(body)
    feedback = Feedback(
        prediction_id=prediction.id,
        reporter=reporter,
        correct_tag=body.correct_tag,
        comment=body.comment,
        text_hash=prediction.text_hash,
    )
    try:
        session.add(feedback)
        session.flush()
        if trust:
            # Trusted reports of one content take turns, each reading what the one before left.
            labels_crud.lock_content(session, text_hash=prediction.text_hash)
        # In this order: a reviewer's label closes the task as it commits, so a label that
        # lands between the two reads is seen by the second.
        settled = not _in_review(session, text_hash=prediction.text_hash)
        current = labels_crud.current_label(session, text_hash=prediction.text_hash)
        # Content the audit samples is labelled blind, on its audit task. Labelled here, before
        # the worker opened that task, it opened none: the reported item (the likeliest error)
        # left the sample, and the audit overstated live precision.
        audited = in_audit_sample(prediction.text_hash, share=audit_share)
        if trust and settled and current is None and not audited:
            _trust(session, feedback=feedback, prediction=prediction, share=holdout_share)
        elif trust and settled and current is not None and current.tag == feedback.correct_tag:
            feedback.status = FeedbackStatus.CONFIRMED  # the label in force already says so
            feedback.label_id = current.id
        else:
            # Untrusted, or trusted against a label already given (by a reviewer, or by an
            # earlier report) or not final yet, or about content a reviewer is asked to label
            # already: a person decides, and no report overwrites another's label (nor
            # labels what a reviewer is about to label, who would then overwrite it).
            payload = review_payload(prediction, reason=ReviewReason.USER_REPORT)
            payload["feedback_id"] = feedback.id
            session.add(OutboxItem(kind=REVIEW_KIND, payload=payload))
        session.commit()
    except IntegrityError:
        # A concurrent identical report won the unique (prediction_id, reporter) race.
        session.rollback()
        existing = find_feedback(session, prediction_id=prediction.id, reporter=reporter)
        if existing is None:
            raise
        log.info("feedback on %s by %r raced; returning the first", prediction.id, reporter)
        return _repeated(existing, body=body), False
    session.refresh(feedback)
    return feedback, True


def _in_review(session: Session, *, text_hash: str) -> bool:
    """Whether the content has a task not labelled yet: its label in force may be a first
    one waiting for a second opinion, or one of two waiting for a decision."""
    task = select(ReviewTask.id).where(ReviewTask.open_key == text_hash)
    return session.exec(task).first() is not None


def _repeated(existing: Feedback, *, body: FeedbackCreate) -> Feedback:
    """The first report, when `body` repeats it (a retry, with the same comment or none);
    ConflictError when it names another tag or brings another comment, which would otherwise
    be dropped without a word."""
    # The same words in either of Unicode's forms are the same comment.
    comment, kept = composed(body.comment or ""), composed(existing.comment or "")
    if existing.correct_tag == body.correct_tag and comment in ("", kept):
        return existing
    who = f"reporter {existing.reporter!r}" if existing.reporter else "an anonymous reporter"
    hint = "" if existing.reporter else "; name the reporter to tell reports apart"
    what = repr(existing.correct_tag)
    if existing.correct_tag == body.correct_tag:
        what += " with another comment" if existing.comment else " without a comment"
    raise ConflictError(
        f"{who} already reported prediction {existing.prediction_id} as {what} "
        f"(feedback {existing.id}), and a report is not changed{hint}"
    )


def reports_for_task(session: Session, *, task_id: int) -> list[UserReport]:
    """The user reports a review task reviews, the first `MAX_REPORTS_SHOWN`, oldest first
    (the reporter's name is left out: the reviewer judges the claim, not who made it)."""
    rows = session.exec(
        select(Feedback)
        .where(Feedback.task_id == task_id)
        .order_by(col(Feedback.id))
        .limit(MAX_REPORTS_SHOWN)
    )
    return [UserReport(correct_tag=row.correct_tag, comment=row.comment) for row in rows]


def get_feedback(session: Session, *, feedback_id: int) -> Feedback:
    row = session.get(Feedback, feedback_id, populate_existing=True)
    if row is None:
        raise NotFoundError(f"feedback {feedback_id} does not exist")
    return row


def feedback_public(session: Session, *, feedback: Feedback) -> FeedbackPublic:
    """The public view; `final_tag` is the label that settled the report (the one its status
    compares with: a later label of the same content, from another review, does not change
    what became of this report)."""
    assert feedback.id is not None
    final_tag = None
    if feedback.status in SETTLED and feedback.label_id is not None:
        label = session.get(Label, feedback.label_id)
        final_tag = label.tag if label is not None else None
    return FeedbackPublic(
        feedback_id=feedback.id,
        prediction_id=feedback.prediction_id,
        correct_tag=feedback.correct_tag,
        status=feedback.status,
        task_id=feedback.task_id,
        final_tag=final_tag,
        created_at=as_utc(feedback.created_at),
    )
