"""Dataset snapshots: exactly which reviewer labels a model version was trained on."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Column, DateTime
from sqlmodel import Field, SQLModel

from service.entities.common import utcnow


class DatasetSnapshot(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    created_at: datetime = Field(default_factory=utcnow, sa_column=Column(DateTime(timezone=True)))
    base_hash: str
    base_rows: int
    train_label_ids: list[int] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    holdout_label_ids: list[int] = Field(
        default_factory=list, sa_column=Column(JSON, nullable=False)
    )


class LineageReport(SQLModel):
    """A user's report whose content's label went into a version: which label, and what the
    review made of the report."""

    feedback_id: int
    label_id: int
    status: str
    held_out: bool


class ModelLineage(SQLModel):
    """The data a version was made from, as the registry records it: the base file (by hash
    and rows) and the reviewer labels it trained on or was evaluated on, by id, with the user
    reports behind those labels. A version trained from a file alone (`tagflow train`) has no
    snapshot: `snapshot_id` null and no labels; so has an imported one, with `imported_from`."""

    version: str
    snapshot_id: int | None
    read_at: datetime | None
    base_hash: str | None
    base_rows: int | None
    train_rows: int
    eval_rows: int | None
    train_labels: int
    holdout_labels: int
    train_label_ids: list[int]
    holdout_label_ids: list[int]
    reports: list[LineageReport]
    # For a version imported from another deployment, the version it was there: its snapshot,
    # labels and reports are that deployment's (`params.imported`), none of them here.
    imported_from: str | None = None
