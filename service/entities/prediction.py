"""Logged predictions: every answer of POST /predict, and what a shadow model said about it."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import JSON, Column, DateTime
from sqlmodel import Field, SQLModel

from service.entities.common import utcnow


class PredictionStatus(StrEnum):
    """`auto`: confident enough to accept; `review`: goes to a human."""

    AUTO = "auto"
    REVIEW = "review"


class PredictionBase(SQLModel):
    tag: str
    confidence: float
    scores: dict[str, float] = Field(sa_column=Column(JSON, nullable=False))
    status: PredictionStatus
    model_version: str


class PredictionCreate(PredictionBase):
    """A prediction on its way to the log: built per request, written in bulk later.

    A plain pydantic model, because building the table model costs ten times as much (SQLAlchemy
    instruments every attribute) and the request path builds one per item.
    """

    id: str = Field(max_length=32)
    created_at: datetime = Field(default_factory=utcnow)
    text_hash: str = Field(max_length=64)
    title: str
    description: str
    latency_ms: float


class Prediction(PredictionBase, table=True):
    id: str = Field(primary_key=True, max_length=32)
    # Indexed for retention (`tagflow db prune`): rows arrive in time order, so the index only
    # ever grows at its end.
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(DateTime(timezone=True), index=True)
    )
    text_hash: str = Field(index=True, max_length=64)
    title: str
    description: str
    latency_ms: float


class PredictionPublic(PredictionBase):
    """What POST /predict returns for one item."""

    prediction_id: str


class HumanLabel(SQLModel):
    """The label a person gave this content (a reviewer, or a trusted user report)."""

    label_id: int
    tag: str
    source: str
    created_at: datetime


class ReviewState(SQLModel):
    """This content's latest review task."""

    task_id: int
    status: str
    reason: str
    stage: str  # first, second (a second opinion asked), adjudicate (two labels differ)
    # The tags of the two labels a decision is awaited between (stage adjudicate), else none.
    opinions: list[str] = []


class PredictionRecord(PredictionBase):
    """A logged prediction as GET /predictions/{id} returns it, with what people made of its
    content since: the label in force and the latest review task."""

    prediction_id: str
    created_at: datetime
    title: str
    description: str
    latency_ms: float
    label: HumanLabel | None
    review: ReviewState | None


class ShadowPrediction(SQLModel, table=True):
    """A candidate model's answer on live traffic, logged beside production, never returned."""

    id: int | None = Field(default=None, primary_key=True)
    prediction_id: str = Field(index=True, max_length=32)
    model_version: str = Field(index=True)
    tag: str
    confidence: float
    agrees: bool
    created_at: datetime = Field(default_factory=utcnow, sa_column=Column(DateTime(timezone=True)))
