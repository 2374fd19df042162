"""Labels: append-only reviewer answers, the current label per content, and the export.

A label is never edited. A correction is a new row whose `supersedes` points at the old one;
the old row gets `superseded_by`. "Current" labels are the rows not superseded: at most one
per content (text_hash).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func
from sqlalchemy.orm import aliased
from sqlmodel import Session, col, select
from sqlmodel.sql.expression import Select

from service.crud.aggregates import count_where, rate
from service.crud.overlap import ReviewerAgreement, by_reviewer, disputed_contents, pairs
from service.db import take_turns
from service.entities import Label, LabelSource, ReviewerStats
from service.entities.common import as_utc
from service.entities.review import ReviewReason, ReviewStatus, ReviewTask
from service.tags import TagSet

EXPORT_COLUMNS = (
    "id",
    "created_on",
    "title",
    "description",
    "tag",
    "reviewer",
    "source",
    "holdout",
)
# PostgreSQL's advisory locks in their two-key form: this class, and a hash of the content.
_CONTENT_LOCK_CLASS = 0x7466636C


def holdout_for(text_hash: str, *, share: float) -> bool:
    """Whether content belongs to the held-out share: fixed by its hash, never re-drawn."""
    return int(text_hash[:8], 16) % 1000 < share * 1000


def lock_content(session: Session, *, text_hash: str) -> None:
    """Take the content's turn for the rest of the session's transaction, for a writer that
    decides from what it reads whether to label the content (a trusted user report): two such
    writers reading at once each found no label, and each added one in force."""
    take_turns(session, cls=_CONTENT_LOCK_CLASS, key=text_hash, table=Label)


def undone_labels() -> Select[tuple[int]]:
    """The ids of review labels their reviewer took back (undo) and has not replaced: their
    task is back in the queue (leased to them, or skipped, released or run out since) and no
    longer records them. Such a label stays the content's last word, so that the next label
    supersedes it, but it is no training data."""
    recorded = col(Label.id).in_(
        [ReviewTask.final_label_id, ReviewTask.first_label_id, ReviewTask.second_label_id]
    )
    return (
        select(Label.id)
        .join(ReviewTask, col(ReviewTask.id) == col(Label.task_id))
        .where(col(ReviewTask.status) != ReviewStatus.LABELED, ~func.coalesce(recorded, False))
    )


def current_labels(session: Session) -> list[Label]:
    """Every label not superseded by a later one, oldest first, except for contents whose two
    independent labels differ and wait for a decision (crud.overlap) and labels taken back."""
    return list(
        session.exec(
            select(Label)
            .where(
                col(Label.superseded_by).is_(None),
                col(Label.text_hash).not_in(disputed_contents()),
                col(Label.id).not_in(undone_labels()),
            )
            .order_by(col(Label.id))
        )
    )


def current_label(session: Session, *, text_hash: str) -> Label | None:
    """The label in force for one content, if it has been labelled."""
    return session.exec(
        select(Label)
        .where(Label.text_hash == text_hash, col(Label.superseded_by).is_(None))
        .order_by(col(Label.id).desc())
    ).first()


def label_in_force(session: Session, *, text_hash: str) -> Label | None:
    """The content's label as the export and retraining see it: its current label, unless
    its reviewer took it back (undo) and no label has replaced it yet, or two reviewers'
    labels of it differ and wait for a decision."""
    return session.exec(
        select(Label).where(
            Label.text_hash == text_hash,
            col(Label.superseded_by).is_(None),
            col(Label.text_hash).not_in(disputed_contents()),
            col(Label.id).not_in(undone_labels()),
        )
    ).first()


def labelled_embeddings(session: Session) -> list[tuple[Label, bytes | None]]:
    """Current labels with the embedding stored on their review task (None when there is none),
    for duplicate screening of new tasks: the labels the export has, so that the look-alike's
    tag a reviewer is shown is not a disputed content's undecided second opinion, nor a label
    taken back with undo."""
    rows = session.exec(
        select(Label, ReviewTask.embedding)
        .outerjoin(ReviewTask, col(Label.task_id) == col(ReviewTask.id))
        .where(
            col(Label.superseded_by).is_(None),
            col(Label.text_hash).not_in(disputed_contents()),
            col(Label.id).not_in(undone_labels()),
        )
        .order_by(col(Label.id))
    ).all()
    return [(label, embedding) for label, embedding in rows]


def append_label(
    session: Session,
    *,
    text_hash: str,
    title: str,
    description: str,
    tag: str,
    reviewer: str,
    holdout_share: float,
    source: LabelSource = LabelSource.REVIEW,
    task_id: int | None = None,
) -> Label:
    """Add the new current label of a content, superseding the previous one if any.

    Flushes but does not commit: the caller commits it together with its other changes
    (the task status, linked feedback).
    """
    previous = current_label(session, text_hash=text_hash)
    row = Label(
        text_hash=text_hash,
        title=title,
        description=description,
        tag=tag,
        reviewer=reviewer,
        source=source,
        task_id=task_id,
        supersedes=previous.id if previous else None,
        holdout=holdout_for(text_hash, share=holdout_share),
    )
    session.add(row)
    session.flush()
    if previous is not None:
        previous.superseded_by = row.id
        session.add(previous)
        session.flush()
    return row


def _created_on(value: datetime) -> str:
    return as_utc(value).isoformat()


def export_rows(
    session: Session, *, held_out: set[int] | None, tags: TagSet
) -> list[dict[str, object]]:
    """Current labels in the training-file schema (`title, description, tag` plus provenance),
    loadable with `service.ml.dataset.load_dataset`.

    `holdout` says whether retraining evaluates on the label rather than trains on it: true for
    the ids in `held_out` (`service.training_sets.held_out_label_ids`), or, when that is None, for
    labels whose hash falls in the held-out share. A label of a tag not in `tags` (retired),
    which retraining leaves out either way and so never counts in `held_out`, shows what the
    database holds, as it would once relabelled in the file."""
    return [
        {
            "id": label.id,
            "created_on": _created_on(label.created_at),
            "title": label.title,
            "description": label.description,
            "tag": label.tag,
            "reviewer": label.reviewer,
            "source": label.source.value,
            "holdout": _holdout(label, held_out, tags),
        }
        for label in current_labels(session)
    ]


def _holdout(label: Label, held_out: set[int] | None, tags: TagSet) -> bool:
    """The export's `holdout` for `label` (see `export_rows`)."""
    if held_out is None or label.tag not in tags:
        return label.holdout
    return label.id in held_out


def review_labels_standing() -> Select[tuple[int]]:
    """The ids of review labels their own reviewer did not take back: those their task records
    (the label that closed it, a first or a second opinion). Undo takes a label off its task:
    an undo and a new label on the same task are one answer, not two, and a label taken back
    and then given by someone else (or by nobody yet) is no work of its reviewer's."""
    # Aliases of their own: in a query on Label, SQLAlchemy would correlate a bare Label here.
    mine, task = aliased(Label), aliased(ReviewTask)
    recorded = col(mine.id).in_([task.final_label_id, task.first_label_id, task.second_label_id])
    return (
        select(mine.id)
        .join(task, col(task.id) == mine.task_id)
        .where(mine.source == LabelSource.REVIEW, recorded)
    )


def reviewer_stats(session: Session, *, since: datetime) -> list[ReviewerStats]:
    """Per reviewer, their review labels (not those they took back): all of them, those since
    `since` (the day's start), agreement with the suggestion the task showed (none on an audit
    item), how many another reviewer later replaced, and their agreement with other reviewers
    on the overlap sample."""
    later = aliased(Label)
    # An audit item is labelled blind (the page shows no suggestion): a label that matches its
    # tag is no sign of a suggestion taken unread, and would dilute the share that is.
    suggested = col(ReviewTask.suggestion_tag).is_not(None) & (
        col(ReviewTask.reason) != ReviewReason.AUDIT
    )
    rows = session.exec(
        select(  # type: ignore[call-overload]
            Label.reviewer,
            func.count(col(Label.id)),
            count_where(col(Label.created_at) >= since),
            func.max(Label.created_at),
            count_where(suggested),
            count_where(suggested & (col(Label.tag) == ReviewTask.suggestion_tag)),
            count_where(
                col(later.id).is_not(None)
                & (later.source == LabelSource.REVIEW)  # not a user's trusted report
                & (later.reviewer != Label.reviewer)
                & (later.tag != Label.tag)
            ),
        )
        .select_from(Label)
        .outerjoin(ReviewTask, col(ReviewTask.id) == Label.task_id)
        .outerjoin(later, col(later.id) == Label.superseded_by)
        .where(col(Label.id).in_(review_labels_standing()))
        .group_by(Label.reviewer)
        .order_by(Label.reviewer)
    )
    overlap = by_reviewer(pairs(session))
    return [
        ReviewerStats(
            reviewer=reviewer,
            labels=labels,
            labels_today=today,
            last_label_at=as_utc(last),
            with_suggestion=with_suggestion,
            agreed_with_suggestion=rate(agreed, with_suggestion),
            changed_by_others=changed,
            **overlap_fields(overlap.get(reviewer, ReviewerAgreement())),
        )
        for reviewer, labels, today, last, with_suggestion, agreed, changed in rows
    ]


def overlap_fields(mine: ReviewerAgreement) -> dict[str, object]:
    return {
        "paired": mine.paired,
        "agreed_with_peer": mine.agreement,
        "disputes_decided": mine.decided,
        "upheld": mine.upheld_rate,
    }
