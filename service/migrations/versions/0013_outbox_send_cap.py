"""Outbox rows count their sends, and the relay stops a row after the fifth.

A row whose job Redis loses every time (a payload whose run takes its worker and Redis down)
was sent again after each loss, without end and without a word. A row now counts how often it
was handed to RQ (`sends`); one whose fifth job is lost too is stopped (`stopped_at`), logged,
and sent again only by `tagflow db resend-outbox`. Rows before this revision count from 0;
no row is rewritten, and the index holds the stopped rows only (counted at every scrape).

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06 20:10:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | Sequence[str] | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

STOPPED = "stopped_at IS NOT NULL"


def upgrade() -> None:
    with op.batch_alter_table("outboxitem", schema=None) as batch_op:
        batch_op.add_column(sa.Column("sends", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("stopped_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index(
            "ix_outboxitem_stopped",
            ["stopped_at"],
            unique=False,
            sqlite_where=sa.text(STOPPED),
            postgresql_where=sa.text(STOPPED),
        )


def downgrade() -> None:
    with op.batch_alter_table("outboxitem", schema=None) as batch_op:
        batch_op.drop_index("ix_outboxitem_stopped")
        batch_op.drop_column("stopped_at")
        batch_op.drop_column("sends")
