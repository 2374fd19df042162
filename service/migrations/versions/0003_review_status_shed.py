"""Review status `shed`: an unsure task taken out of the queue unreviewed by its bound.

PostgreSQL keeps enum values in the type; SQLite stores the name as text and needs nothing.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 13:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TYPE reviewstatus ADD VALUE IF NOT EXISTS 'SHED'")


def downgrade() -> None:
    # As in 0002: the older code cannot read a shed task, and PostgreSQL cannot drop the value.
    count = op.get_bind().execute(sa.text("SELECT count(*) FROM review_task WHERE status = 'SHED'"))
    if count.scalar_one():
        raise RuntimeError("shed review tasks exist; delete them before downgrading")
