"""Admin jobs (a retraining, a comparison) are recorded in the database, not in Redis alone.

A job queued by POST /models/retrain or /models/{version}/compare lived in Redis only: a Redis
restart before a worker took it (the machine's Redis keeps nothing on disk) lost it, GET
/jobs/{id} answered 404 and the retraining never ran. A job now has a row here, written before
it is queued and updated by the worker; a job Redis lost is queued again from it. New table
only: jobs queued before this revision have none.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06 03:04:27.933822
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | Sequence[str] | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "jobrecord",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("func", sa.String(), nullable=False),
        sa.Column("args", sa.JSON(), nullable=False),
        sa.Column("description", sa.String(), nullable=False),
        sa.Column("retries", sa.Integer(), nullable=False),
        sa.Column(
            "state",
            sa.Enum("QUEUED", "STARTED", "FINISHED", "FAILED", name="jobstate"),
            nullable=False,
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("sends", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("error", sa.String(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("jobrecord", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_jobrecord_state"), ["state"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("jobrecord", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_jobrecord_state"))

    op.drop_table("jobrecord")
    sa.Enum(name="jobstate").drop(op.get_bind(), checkfirst=True)
