"""Model versions remember the production version they replaced, so rollback walks back.

Rollback used to promote the archived version promoted most recently: after one rollback that
was the version just rolled away from, so a second rollback (a retried request, two operators)
served the faulty model again. `previous_version` is the version a rollback from this one
restores. Existing rows get the order their `promoted_at` gives, which is what rollback did.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03 21:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("modelversion", schema=None) as batch_op:
        batch_op.add_column(sa.Column("previous_version", sa.String(), nullable=True))
    bind = op.get_bind()
    promoted = bind.execute(
        sa.text(
            "SELECT id, version FROM modelversion WHERE promoted_at IS NOT NULL "
            "ORDER BY promoted_at, id"
        )
    ).all()
    for (_, before), (row_id, _) in zip(promoted, promoted[1:], strict=False):
        bind.execute(
            sa.text("UPDATE modelversion SET previous_version = :before WHERE id = :id"),
            {"before": before, "id": row_id},
        )


def downgrade() -> None:
    with op.batch_alter_table("modelversion", schema=None) as batch_op:
        batch_op.drop_column("previous_version")
