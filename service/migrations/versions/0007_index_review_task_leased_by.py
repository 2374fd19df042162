"""Index review_task.leased_by, so a claim finds the task its reviewer already holds at once.

A claim first hands back the reviewer's own live lease (crud/review.py). Without the index that
lookup scanned the table. The index is partial (leased rows only): SQLite's planner judged a
full one, NULL on almost every row, useless after ANALYZE and scanned anyway.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03 11:20:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("review_task", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_review_task_leased_by"),
            ["leased_by"],
            unique=False,
            sqlite_where=sa.text("leased_by IS NOT NULL"),
            postgresql_where=sa.text("leased_by IS NOT NULL"),
        )


def downgrade() -> None:
    with op.batch_alter_table("review_task", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_review_task_leased_by"))
