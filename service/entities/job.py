"""An admin's background job (a retraining, a comparison), recorded in the database.

RQ keeps a job in Redis only, and the machine's Redis keeps nothing on disk: a retraining
queued by `POST /models/retrain` and lost in a Redis restart before a worker took it was gone,
GET /jobs/{id} answered 404 and nothing ran. The record is written before the job is queued
and kept up to date by the worker, so the job is queued again if Redis lost it
(`service.jobs.redeliver_lost_jobs`) and its state is known without Redis.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Column, DateTime
from sqlmodel import Field, SQLModel

from service.entities.common import utcnow


class JobState(StrEnum):
    """A job's state as the API reports it (RQ's finer states folded into these four)."""

    QUEUED = "queued"
    STARTED = "started"
    FINISHED = "finished"
    FAILED = "failed"


class JobRecord(SQLModel, table=True):
    # The RQ job's id: the job is queued again under it, so GET /jobs/{id} goes on answering.
    id: str = Field(primary_key=True)
    func: str  # the job's function, by dotted name (`workers.training_jobs.retrain`)
    args: list[Any] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    description: str
    retries: int = 0  # RQ's Retry(max=...) for a worker killed under it
    state: JobState = Field(default=JobState.QUEUED, index=True)
    created_at: datetime = Field(default_factory=utcnow, sa_column=Column(DateTime(timezone=True)))
    # When Redis last took the job, and how many times it did (more than once: Redis lost it).
    sent_at: datetime | None = Field(default=None, sa_column=Column(DateTime(timezone=True)))
    sends: int = 0
    started_at: datetime | None = Field(default=None, sa_column=Column(DateTime(timezone=True)))
    ended_at: datetime | None = Field(default=None, sa_column=Column(DateTime(timezone=True)))
    result: Any = Field(default=None, sa_column=Column(JSON, nullable=True))
    error: str | None = None
