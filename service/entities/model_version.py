"""Model registry entries: one row per trained model version."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import field_validator
from sqlalchemy import JSON, Column, DateTime, Index, text
from sqlmodel import Field, SQLModel

from service.entities.common import as_utc, showable, utc_text, utcnow

# The key of a version's params that records the runtime that made it (`ml.runtime`), and what
# it records: the parts an artifact's pickle, and the answers it gives, depend on.
RUNTIME = "runtime"
RUNTIME_PARTS = ("tagflow", "python", "scikit-learn", "numpy", "joblib", "onnxruntime")
UNKNOWN = "unknown"  # a part a version does not record: registered before tagflow recorded it


class ModelStatus(StrEnum):
    CANDIDATE = "candidate"
    PRODUCTION = "production"
    ARCHIVED = "archived"


class ModelVersionBase(SQLModel):
    version: str = Field(unique=True, index=True)
    status: ModelStatus = ModelStatus.CANDIDATE
    data_hash: str
    data_rows: int
    dataset_snapshot_id: int | None = None
    params: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    metrics: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    thresholds: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    gate: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    artifact_path: str
    checksum: str
    note: str = ""


class ModelVersion(ModelVersionBase, table=True):
    __table_args__ = (
        # At most one production version, as a database guarantee: two promotions at once
        # (two operators, the retraining job and an operator) cannot both win.
        Index(
            "ix_modelversion_one_production",
            "status",
            unique=True,
            sqlite_where=text("status = 'PRODUCTION'"),
            postgresql_where=text("status = 'PRODUCTION'"),
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    created_at: datetime = Field(default_factory=utcnow, sa_column=Column(DateTime(timezone=True)))
    promoted_at: datetime | None = Field(default=None, sa_column=Column(DateTime(timezone=True)))
    # The production version this one replaced when last promoted. (Rollback follows the
    # production history, entities/production_change.py: a version promoted twice has two.)
    previous_version: str | None = None


class ModelVersionPublic(ModelVersionBase):
    # Where the artifacts sit on the server: shown to admin keys only (null for the others).
    artifact_path: str | None = None  # type: ignore[assignment]
    created_at: datetime
    promoted_at: datetime | None
    previous_version: str | None = None

    @field_validator("created_at", "promoted_at")
    @classmethod
    def _in_utc(cls, value: datetime | None) -> datetime | None:
        # SQLite gives the stored times back without their zone: shown so, "23:00" read as a
        # client's local time, and a record said another thing on PostgreSQL ("23:00Z").
        return as_utc(value) if value is not None else None

    @field_validator("params", "metrics", "thresholds", "gate")
    @classmethod
    def _showable(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        # What the JSON columns hold is shown even if a lone surrogate got in (escaped), so
        # one such record does not make every listing it is in a 500.
        return showable(value)

    @field_validator("params", "thresholds")
    @classmethod
    def _times_in_utc_text(cls, value: dict[str, Any]) -> dict[str, Any]:
        # Times these JSON columns keep as text (`thresholds.history[].at`, the lineage's
        # `params.imported.created_at`...) were written ending in "+00:00", where every other
        # time the API shows ends in "Z": those stored so are shown as the others.
        return _in_utc_text(value)

    @field_validator("params")
    @classmethod
    def _runtime_or_unknown(cls, value: dict[str, Any]) -> dict[str, Any]:
        # Every version shows what made it, in one shape: a version registered before it was
        # recorded says "unknown" for each part, so a client reading params.runtime never fails.
        record = value.get(RUNTIME)
        record = record if isinstance(record, dict) else {}
        parts = dict.fromkeys((*RUNTIME_PARTS, *record))  # a newer exporter may record more
        return {**value, RUNTIME: {part: str(record.get(part, UNKNOWN)) for part in parts}}


def _in_utc_text(value: Any, key: str = "") -> Any:
    """`value` with every time under a key `at` or `..._at` in `utc_text`'s form, at any
    depth; what is not a time is left as it is."""
    if isinstance(value, dict):
        return {k: _in_utc_text(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_in_utc_text(v, key) for v in value]
    if isinstance(value, str) and (key == "at" or key.endswith("_at")):
        try:
            return utc_text(datetime.fromisoformat(value))
        except ValueError:
            return value
    return value
