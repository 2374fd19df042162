"""The history of production: every promotion and rollback, kept, so rollback undoes promotions.

Each version remembered only the production version it replaced when last promoted, so after
an older version was promoted again, rollbacks in a row came back round to it (v1 → v3 → v2 →
v1 → v3). Rollback now undoes the latest promotion not yet undone, from this table. Existing
registries get the promotions that `previous_version` still shows: from production back along
the chain, stopping before a version seen already.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04 16:41:29.798182
"""

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ACTOR = "recorded before the history was kept (migration 0010)"


def upgrade() -> None:
    op.create_table(
        "productionchange",
        sa.Column(
            "action", sa.Enum("PROMOTE", "ROLLBACK", name="productionaction"), nullable=False
        ),
        sa.Column("version", sa.String(), nullable=False),
        sa.Column("replaced", sa.String(), nullable=True),
        sa.Column("actor", sa.String(), nullable=False),
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("undone_by", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["undone_by"],
            ["productionchange.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("productionchange", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_productionchange_version"), ["version"], unique=False)
    _record_known_promotions(op.get_bind())


def _record_known_promotions(bind: sa.Connection) -> None:
    rows = bind.execute(
        sa.text(
            "SELECT version, previous_version, COALESCE(promoted_at, created_at), status "
            "FROM modelversion"
        )
    ).all()
    # A version that never recorded its promotion time gets its creation time (or now).
    by_version = {version: (before, at or datetime.now(UTC)) for version, before, at, _ in rows}
    chain = [version for version, _, _, status in rows if status == "PRODUCTION"]
    while chain:
        before = by_version[chain[-1]][0]
        if before is None or before in chain or before not in by_version:
            break
        chain.append(before)
    replaced: str | None = None
    for version in reversed(chain):  # oldest first, so ids keep the order of promotion
        bind.execute(
            sa.text(
                "INSERT INTO productionchange (action, version, replaced, actor, at) "
                "VALUES ('PROMOTE', :version, :replaced, :actor, :at)"
            ),
            {
                "version": version,
                "replaced": replaced,
                "actor": _ACTOR,
                "at": by_version[version][1],
            },
        )
        replaced = version


def downgrade() -> None:
    with op.batch_alter_table("productionchange", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_productionchange_version"))

    op.drop_table("productionchange")
    sa.Enum(name="productionaction").drop(op.get_bind(), checkfirst=True)
