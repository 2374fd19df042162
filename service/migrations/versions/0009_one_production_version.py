"""At most one production model version, enforced by a partial unique index.

Promotion read the production version and then wrote: two promotions at once (two operators,
the retraining job beside an operator, two `tagflow up` seeding one data directory) could both
archive the old version and leave two rows in production, and which one served was up to the
database's row order. Databases that already hold several keep the one promoted last; the
others are archived, as that promotion would have done.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04 14:40:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_PRODUCTION = "status = 'PRODUCTION'"


def upgrade() -> None:
    bind = op.get_bind()
    rows = bind.execute(
        sa.text(
            f"SELECT id FROM modelversion WHERE {_PRODUCTION} "
            "ORDER BY promoted_at DESC NULLS LAST, id DESC"
        )
    ).all()
    for (row_id,) in rows[1:]:
        bind.execute(
            sa.text("UPDATE modelversion SET status = 'ARCHIVED' WHERE id = :id"), {"id": row_id}
        )
    with op.batch_alter_table("modelversion", schema=None) as batch_op:
        batch_op.create_index(
            "ix_modelversion_one_production",
            ["status"],
            unique=True,
            sqlite_where=sa.text(_PRODUCTION),
            postgresql_where=sa.text(_PRODUCTION),
        )


def downgrade() -> None:
    with op.batch_alter_table("modelversion", schema=None) as batch_op:
        batch_op.drop_index("ix_modelversion_one_production")
