"""Review tasks: items a human must label, leased to one reviewer at a time."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import JSON, Column, DateTime, Index, LargeBinary, text
from sqlmodel import Field, SQLModel

from service.entities.common import utcnow


class ReviewReason(StrEnum):
    LOW_CONFIDENCE = "low_confidence"
    USER_REPORT = "user_report"
    # A sample of the predictions accepted automatically: their labels measure live precision.
    AUDIT = "audit"
    # A training row whose label the model, judging it out of fold, doubts (ml/suspects.py).
    LABEL_CHECK = "label_check"


class ReviewStatus(StrEnum):
    OPEN = "open"
    LEASED = "leased"
    LABELED = "labeled"
    # Taken out of the queue unreviewed, by the queue bound (crud.queue_bound.shed): an unsure item
    # nobody reported, at the bottom of a queue past its limit or older than its age limit.
    # The row and its prediction stay; the same content arriving again opens a new task.
    SHED = "shed"


# In the queue: waiting for a reviewer, or with one now.
ACTIVE = (ReviewStatus.OPEN, ReviewStatus.LEASED)


class ReviewStage(StrEnum):
    """The answer a task waits for. Most tasks need one label. A sample of them (the overlap,
    `TAGFLOW_REVIEW_OVERLAP_SHARE`) also needs a second one from another reviewer, given
    without seeing the first; when the two differ, a third reviewer decides (adjudication)."""

    FIRST = "first"
    SECOND = "second"
    ADJUDICATE = "adjudicate"


class ReviewTask(SQLModel, table=True):
    __tablename__ = "review_task"
    __table_args__ = (
        # A claim first looks for the task its reviewer already holds. Partial, so it holds
        # only leased rows: a full index on a column that is NULL almost everywhere looks
        # useless to SQLite's planner after ANALYZE, which then scans the table instead.
        Index(
            "ix_review_task_leased_by",
            "leased_by",
            sqlite_where=text("leased_by IS NOT NULL"),
            postgresql_where=text("leased_by IS NOT NULL"),
        ),
        # /metrics counts the tasks ever shed at every scrape: partial, it holds only those.
        Index(
            "ix_review_task_shed_at",
            "shed_at",
            sqlite_where=text("shed_at IS NOT NULL"),
            postgresql_where=text("shed_at IS NOT NULL"),
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    text_hash: str = Field(index=True, max_length=64)
    # Equal to text_hash while the task is not labelled, NULL after: a unique column that
    # makes "one open task per content" a database guarantee on SQLite and PostgreSQL alike.
    open_key: str | None = Field(default=None, unique=True, max_length=64)
    title: str
    description: str
    reason: ReviewReason
    status: ReviewStatus = Field(default=ReviewStatus.OPEN, index=True)
    prediction_id: str | None = None
    model_version: str | None = None
    suggestion_tag: str | None = None
    suggestion_scores: dict[str, float] = Field(
        default_factory=dict, sa_column=Column(JSON, nullable=False)
    )
    uncertainty: float = 0.0
    arrivals: int = 1
    reports: int = 0
    # Which deliveries were counted (the latest ones): a review job delivered twice (outbox
    # re-send, RQ retry) must not count as a second arrival.
    arrival_keys: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    diversity_penalty: float = 0.0
    priority: float = Field(default=0.0, index=True)
    duplicate_of: int | None = None
    duplicate_tag: str | None = None
    embedding: bytes | None = Field(default=None, sa_column=Column(LargeBinary))
    leased_by: str | None = None
    lease_expires_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True))
    )
    stage: ReviewStage = ReviewStage.FIRST
    # The two independent labels of an overlap task, and who gave them: claim does not offer
    # the task to them again. `final_label_id`: the label that closed the task, at any stage.
    first_label_id: int | None = None
    first_reviewer: str | None = None
    second_label_id: int | None = Field(default=None, index=True)  # /metrics reads the pairs
    second_reviewer: str | None = None
    final_label_id: int | None = None
    skips: int = 0
    # The reviewer who skipped it last: claim hands it to someone else first.
    skipped_by: str | None = None
    # When the queue bound shed it. Kept when a late label takes the task out of `shed`, so
    # the count of tasks ever shed only grows, as the shedding alert reads it.
    shed_at: datetime | None = Field(default=None, sa_column=Column(DateTime(timezone=True)))
    created_at: datetime = Field(default_factory=utcnow, sa_column=Column(DateTime(timezone=True)))
    updated_at: datetime = Field(default_factory=utcnow, sa_column=Column(DateTime(timezone=True)))


class Suggestion(SQLModel):
    """The model's tag and scores as a reviewer sees them: empty (no tag, no scores) for an
    audit item, which is labelled blind."""

    tag: str | None
    scores: dict[str, float]


class EarlierLabel(SQLModel):
    """One of the two labels an adjudicator decides between."""

    reviewer: str
    tag: str


class UserReport(SQLModel):
    """What a user said of the content's tag (POST /feedback), as its reviewer sees it."""

    correct_tag: str
    comment: str | None


class ReviewTaskPublic(SQLModel):
    """What a reviewer receives on claim. A second opinion shows no earlier label (it must be
    independent); an adjudication shows both. `reports`: the user reports the task reviews.
    `lease_remaining_s`: the seconds left on the lease when the answer was made, by the
    server's clock (0 once run out; None with no lease): a page counts down from it, which a
    browser clock set wrong cannot throw off, as it did reading `lease_expires_at`."""

    task_id: int
    title: str
    description: str
    suggestion: Suggestion
    # A labelled item this one reads like (cosine >= TAGFLOW_DUPLICATE_COSINE): the id of its
    # label (as GET /labels/export numbers labels; not a task id), the label's tag, and the
    # item's title, which the page shows.
    duplicate_of: int | None
    duplicate_tag: str | None
    duplicate_title: str | None = None
    reason: ReviewReason
    stage: ReviewStage
    earlier_labels: list[EarlierLabel]
    reports: list[UserReport] = []
    priority: float
    lease_expires_at: datetime | None
    lease_remaining_s: float | None
