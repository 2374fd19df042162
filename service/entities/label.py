"""Labels: append-only human answers. A correction is a new row that supersedes the old one."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import Column, DateTime
from sqlmodel import Field, SQLModel

from service.entities.common import as_utc, utcnow


class LabelSource(StrEnum):
    REVIEW = "review"
    FEEDBACK = "feedback"


class LabelBase(SQLModel):
    text_hash: str = Field(index=True, max_length=64)
    title: str
    description: str
    tag: str
    reviewer: str
    source: LabelSource = LabelSource.REVIEW
    task_id: int | None = Field(default=None, index=True)
    supersedes: int | None = None
    # Fixed at creation from the content hash: the held-out share never enters training.
    holdout: bool = False


class Label(LabelBase, table=True):
    id: int | None = Field(default=None, primary_key=True)
    created_at: datetime = Field(default_factory=utcnow, sa_column=Column(DateTime(timezone=True)))
    superseded_by: int | None = None


class LabelPublic(LabelBase):
    id: int
    created_at: datetime
    superseded_by: int | None

    @classmethod
    def of(cls, row: Label) -> LabelPublic:
        """What a client is shown of a stored label (its time in UTC, as every answer has it)."""
        public = cls.model_validate(row, from_attributes=True)
        public.created_at = as_utc(public.created_at)
        return public


class ReviewerStats(SQLModel):
    """One reviewer's work, for whoever leads the review team: how much, how recently, how
    often they took the model's suggestion, and how often someone else later changed it."""

    reviewer: str
    labels: int
    labels_today: int
    last_label_at: datetime
    # Of their labels on tasks that showed a suggestion (not audit items, labelled blind): the
    # share that kept it. Near 1.0 may mean the suggestion is being accepted unread.
    with_suggestion: int
    agreed_with_suggestion: float | None
    # Their labels that a later label by another reviewer replaced with another tag (e.g.
    # after a user report, or an adjudication).
    changed_by_others: int
    # The overlap sample (crud/overlap.py): contents they labelled independently of another
    # reviewer, the share where the two agreed, and of their disagreements that a third
    # reviewer decided, how many and the share decided their way.
    paired: int = 0
    agreed_with_peer: float | None = None
    disputes_decided: int = 0
    upheld: float | None = None


class AgreementStats(SQLModel):
    """How well independent labels agree, over the whole overlap sample: the team's measure of
    label quality, and of how hard the approved tags are to tell apart."""

    pairs: int
    agreed: int
    agreement: float | None
    # Fleiss' kappa: agreement beyond chance given how often each tag is used (1 perfect,
    # 0 chance level); None while there are no pairs.
    kappa: float | None
    # Per tag, specific agreement: 2 x (pairs where both chose it) / (its labels in pairs).
    by_tag: dict[str, float]
    waiting_second: int
    waiting_decision: int
    decided: int
