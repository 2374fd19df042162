"""Review reason `label_check`: a training row whose label the model doubts, for a person.

PostgreSQL keeps enum values in the type; SQLite stores the name as text and needs nothing.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 18:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TYPE reviewreason ADD VALUE IF NOT EXISTS 'LABEL_CHECK'")


def downgrade() -> None:
    # PostgreSQL cannot drop one value of an enum type, and 0001's code cannot read a task that
    # has it: refuse rather than delete reviewers' work. With none, the spare value is harmless.
    count = op.get_bind().execute(
        sa.text("SELECT count(*) FROM review_task WHERE reason = 'LABEL_CHECK'")
    )
    if count.scalar_one():
        raise RuntimeError("review tasks with reason label_check exist; label or delete them first")
