"""Initial schema: exactly what SQLModel.metadata.create_all made before migrations.

Databases created that way are stamped at this revision instead of running it
(service.migrations.BASELINE).

Revision ID: 0001
Revises:
Create Date: 2026-11-25 15:28:21.089447
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "datasetsnapshot",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("base_hash", sa.String(), nullable=False),
        sa.Column("base_rows", sa.Integer(), nullable=False),
        sa.Column("train_label_ids", sa.JSON(), nullable=False),
        sa.Column("holdout_label_ids", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "feedback",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("prediction_id", sa.String(length=64), nullable=False),
        sa.Column("reporter", sa.String(length=200), nullable=False),
        sa.Column("correct_tag", sa.String(), nullable=False),
        sa.Column("comment", sa.String(), nullable=True),
        sa.Column("text_hash", sa.String(length=64), nullable=False),
        sa.Column(
            "status",
            sa.Enum("RECEIVED", "IN_REVIEW", "CONFIRMED", "REJECTED", name="feedbackstatus"),
            nullable=False,
        ),
        sa.Column("task_id", sa.Integer(), nullable=True),
        sa.Column("label_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("prediction_id", "reporter"),
    )
    op.create_index(op.f("ix_feedback_prediction_id"), "feedback", ["prediction_id"], unique=False)
    op.create_index(op.f("ix_feedback_text_hash"), "feedback", ["text_hash"], unique=False)

    op.create_table(
        "label",
        sa.Column("text_hash", sa.String(length=64), nullable=False),
        sa.Column("title", sa.String(), nullable=False),
        sa.Column("description", sa.String(), nullable=False),
        sa.Column("tag", sa.String(), nullable=False),
        sa.Column("reviewer", sa.String(), nullable=False),
        sa.Column("source", sa.Enum("REVIEW", "FEEDBACK", name="labelsource"), nullable=False),
        sa.Column("task_id", sa.Integer(), nullable=True),
        sa.Column("supersedes", sa.Integer(), nullable=True),
        sa.Column("holdout", sa.Boolean(), nullable=False),
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("superseded_by", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_label_task_id"), "label", ["task_id"], unique=False)
    op.create_index(op.f("ix_label_text_hash"), "label", ["text_hash"], unique=False)

    op.create_table(
        "modelversion",
        sa.Column("version", sa.String(), nullable=False),
        sa.Column(
            "status",
            sa.Enum("CANDIDATE", "PRODUCTION", "ARCHIVED", name="modelstatus"),
            nullable=False,
        ),
        sa.Column("data_hash", sa.String(), nullable=False),
        sa.Column("data_rows", sa.Integer(), nullable=False),
        sa.Column("dataset_snapshot_id", sa.Integer(), nullable=True),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("thresholds", sa.JSON(), nullable=False),
        sa.Column("gate", sa.JSON(), nullable=True),
        sa.Column("artifact_path", sa.String(), nullable=False),
        sa.Column("checksum", sa.String(), nullable=False),
        sa.Column("note", sa.String(), nullable=False),
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("promoted_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_modelversion_version"), "modelversion", ["version"], unique=True)

    op.create_table(
        "outboxitem",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.String(), nullable=True),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_outboxitem_kind"), "outboxitem", ["kind"], unique=False)
    op.create_index(op.f("ix_outboxitem_sent_at"), "outboxitem", ["sent_at"], unique=False)

    op.create_table(
        "prediction",
        sa.Column("tag", sa.String(), nullable=False),
        sa.Column("confidence", sa.Float(), nullable=False),
        sa.Column("scores", sa.JSON(), nullable=False),
        sa.Column("status", sa.Enum("AUTO", "REVIEW", name="predictionstatus"), nullable=False),
        sa.Column("model_version", sa.String(), nullable=False),
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("text_hash", sa.String(length=64), nullable=False),
        sa.Column("title", sa.String(), nullable=False),
        sa.Column("description", sa.String(), nullable=False),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_prediction_text_hash"), "prediction", ["text_hash"], unique=False)

    op.create_table(
        "review_task",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("text_hash", sa.String(length=64), nullable=False),
        sa.Column("open_key", sa.String(length=64), nullable=True),
        sa.Column("title", sa.String(), nullable=False),
        sa.Column("description", sa.String(), nullable=False),
        sa.Column(
            "reason",
            sa.Enum("LOW_CONFIDENCE", "USER_REPORT", "AUDIT", name="reviewreason"),
            nullable=False,
        ),
        sa.Column(
            "status", sa.Enum("OPEN", "LEASED", "LABELED", name="reviewstatus"), nullable=False
        ),
        sa.Column("prediction_id", sa.String(), nullable=True),
        sa.Column("model_version", sa.String(), nullable=True),
        sa.Column("suggestion_tag", sa.String(), nullable=True),
        sa.Column("suggestion_scores", sa.JSON(), nullable=False),
        sa.Column("uncertainty", sa.Float(), nullable=False),
        sa.Column("arrivals", sa.Integer(), nullable=False),
        sa.Column("reports", sa.Integer(), nullable=False),
        sa.Column("arrival_keys", sa.JSON(), nullable=False),
        sa.Column("diversity_penalty", sa.Float(), nullable=False),
        sa.Column("priority", sa.Float(), nullable=False),
        sa.Column("duplicate_of", sa.Integer(), nullable=True),
        sa.Column("duplicate_tag", sa.String(), nullable=True),
        sa.Column("embedding", sa.LargeBinary(), nullable=True),
        sa.Column("leased_by", sa.String(), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("skips", sa.Integer(), nullable=False),
        sa.Column("skipped_by", sa.String(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("open_key"),
    )
    op.create_index(op.f("ix_review_task_priority"), "review_task", ["priority"], unique=False)
    op.create_index(op.f("ix_review_task_status"), "review_task", ["status"], unique=False)
    op.create_index(op.f("ix_review_task_text_hash"), "review_task", ["text_hash"], unique=False)

    op.create_table(
        "shadowprediction",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("prediction_id", sa.String(length=32), nullable=False),
        sa.Column("model_version", sa.String(), nullable=False),
        sa.Column("tag", sa.String(), nullable=False),
        sa.Column("confidence", sa.Float(), nullable=False),
        sa.Column("agrees", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        op.f("ix_shadowprediction_model_version"),
        "shadowprediction",
        ["model_version"],
        unique=False,
    )
    op.create_index(
        op.f("ix_shadowprediction_prediction_id"),
        "shadowprediction",
        ["prediction_id"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_table("shadowprediction")
    op.drop_table("review_task")
    op.drop_table("prediction")
    op.drop_table("outboxitem")
    op.drop_table("modelversion")
    op.drop_table("label")
    op.drop_table("feedback")
    op.drop_table("datasetsnapshot")
    # PostgreSQL keeps the enum types create_table made; elsewhere this does nothing.
    for name in (
        "feedbackstatus",
        "labelsource",
        "modelstatus",
        "predictionstatus",
        "reviewreason",
        "reviewstatus",
    ):
        sa.Enum(name=name).drop(op.get_bind(), checkfirst=True)
