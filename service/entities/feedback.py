"""User reports that a prediction's tag was wrong."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import Column, DateTime, UniqueConstraint
from sqlmodel import Field, SQLModel

from service.entities.common import storable_text, utcnow

PredictionIdText = storable_text(min_length=1, max_length=64)
TagText = storable_text(min_length=1, max_length=100)
CommentText = storable_text(max_length=2000)
ReporterText = storable_text(max_length=200, name=True)


class FeedbackStatus(StrEnum):
    RECEIVED = "received"  # stored, review task not yet created
    IN_REVIEW = "in_review"  # a reviewer will look at it
    CONFIRMED = "confirmed"  # a reviewer (or trust setting) agreed with the reporter
    REJECTED = "rejected"  # a reviewer chose another tag


# What became of a report once a final label decided it.
SETTLED = (FeedbackStatus.CONFIRMED, FeedbackStatus.REJECTED)


class FeedbackCreate(SQLModel):
    prediction_id: PredictionIdText
    correct_tag: TagText
    comment: CommentText | None = None
    reporter: ReporterText | None = None


class Feedback(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("prediction_id", "reporter"),)

    id: int | None = Field(default=None, primary_key=True)
    prediction_id: str = Field(index=True, max_length=64)
    reporter: str = Field(default="", max_length=200)
    correct_tag: str
    comment: str | None = None
    text_hash: str = Field(index=True, max_length=64)
    status: FeedbackStatus = FeedbackStatus.RECEIVED
    task_id: int | None = None
    label_id: int | None = None
    created_at: datetime = Field(default_factory=utcnow, sa_column=Column(DateTime(timezone=True)))


class FeedbackPublic(SQLModel):
    feedback_id: int
    prediction_id: str
    correct_tag: str
    status: FeedbackStatus
    task_id: int | None
    final_tag: str | None = None
    created_at: datetime
