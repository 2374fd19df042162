"""Outbox rows remember the RQ job that carries them and when the worker processed them.

A row was done once Redis took its job: a Redis restart (it keeps nothing on disk) lost the jobs
not yet run, and their review items and user reports never reached the queue. A row sent but
not done whose job Redis no longer has is now sent again. Rows sent before this revision name
no job and are never sent again; no row is rewritten (the table keeps every row), and the
index holds the rows in flight only.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06 00:15:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | Sequence[str] | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

IN_FLIGHT = "job_id IS NOT NULL AND done_at IS NULL"


def upgrade() -> None:
    with op.batch_alter_table("outboxitem", schema=None) as batch_op:
        batch_op.add_column(sa.Column("job_id", sa.String(), nullable=True))
        batch_op.add_column(sa.Column("done_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index(
            "ix_outboxitem_in_flight",
            ["job_id"],
            unique=False,
            sqlite_where=sa.text(IN_FLIGHT),
            postgresql_where=sa.text(IN_FLIGHT),
        )


def downgrade() -> None:
    with op.batch_alter_table("outboxitem", schema=None) as batch_op:
        batch_op.drop_index("ix_outboxitem_in_flight")
        batch_op.drop_column("done_at")
        batch_op.drop_column("job_id")
