"""Index prediction.created_at, for retention (`tagflow db prune`).

Without it, finding the old rows reads the whole table. On a large existing table, building the
index takes a while, once.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 13:56:37.649275
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("prediction", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_prediction_created_at"), ["created_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("prediction", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_prediction_created_at"))
