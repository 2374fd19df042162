"""Review tasks remember when the queue bound shed them (`shed_at`).

The shedding alert read the count of tasks in state `shed` as a count that only grows, but a
label sent late for a shed task takes it out of `shed`: in an hour when reviewers labelled as
many shed tasks late as the bound shed, the alert saw nothing. `shed_at` stays once set, so
the count of tasks ever shed (`tagflow_review_shed_total`) only grows. Tasks shed before this
revision count from their last change (`updated_at`, set when they were shed); those labelled
late before it cannot be told from others and are not counted.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-07 22:20:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | Sequence[str] | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SHED_AT = "shed_at IS NOT NULL"


def upgrade() -> None:
    with op.batch_alter_table("review_task", schema=None) as batch_op:
        batch_op.add_column(sa.Column("shed_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index(
            "ix_review_task_shed_at",
            ["shed_at"],
            unique=False,
            sqlite_where=sa.text(SHED_AT),
            postgresql_where=sa.text(SHED_AT),
        )
    # Enum members as SQLAlchemy stores them (by name). Compared as text: on PostgreSQL, a
    # database upgraded from empty in one transaction has just added 'SHED' to the enum type,
    # and a new enum value cannot be used before it is committed.
    op.execute("UPDATE review_task SET shed_at = updated_at WHERE CAST(status AS TEXT) = 'SHED'")


def downgrade() -> None:
    with op.batch_alter_table("review_task", schema=None) as batch_op:
        batch_op.drop_index("ix_review_task_shed_at")
        batch_op.drop_column("shed_at")
