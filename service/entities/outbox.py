"""The outbox: review work written in the same transaction as its prediction, sent to RQ later.

A row stays until RQ has accepted the job, so a Redis outage loses nothing; it is done once the
worker has processed its payload, so a job that Redis lost (a restart: it keeps nothing on
disk) is found by its id and sent again (`service.outbox.redeliver_lost`), up to
`service.outbox.MAX_SENDS` times: then it is stopped, until `tagflow db resend-outbox`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, DateTime, Index, text
from sqlmodel import Field, SQLModel

from service.entities.common import utcnow

# Rows sent whose payload the worker has not processed yet: what `redeliver_lost` looks at
# every 30 s. Partial, so it holds only those, however long the table (done rows stay until
# the retention prune deletes them, `outbox.prune_done`).
IN_FLIGHT = "job_id IS NOT NULL AND done_at IS NULL"
# Rows the relay gave up on: counted at every scrape and /review/stats, a handful at most.
STOPPED = "stopped_at IS NOT NULL"


class OutboxItem(SQLModel, table=True):
    __table_args__ = (
        Index(
            "ix_outboxitem_in_flight",
            "job_id",
            sqlite_where=text(IN_FLIGHT),
            postgresql_where=text(IN_FLIGHT),
        ),
        Index(
            "ix_outboxitem_stopped",
            "stopped_at",
            sqlite_where=text(STOPPED),
            postgresql_where=text(STOPPED),
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    kind: str = Field(index=True)
    payload: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(default_factory=utcnow, sa_column=Column(DateTime(timezone=True)))
    attempts: int = 0
    last_error: str | None = None
    sent_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), index=True)
    )
    # The RQ job that carries the payload since it was sent, and when the worker processed it
    # (rows sent before migration 0011 have neither, and are never sent again).
    job_id: str | None = None
    done_at: datetime | None = Field(default=None, sa_column=Column(DateTime(timezone=True)))
    # How many times the row was handed to RQ, and when the relay gave up on it (sent
    # `MAX_SENDS` times, each job lost): a stopped row keeps its last `sent_at`, names no job,
    # and goes again only through `tagflow db resend-outbox`.
    sends: int = 0
    stopped_at: datetime | None = Field(default=None, sa_column=Column(DateTime(timezone=True)))
