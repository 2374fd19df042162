"""Reviewers as people: one row per name as a person reads it, holding its first spelling.

With a key the role shares, "Ann", "ann", "ANN", fullwidth "ａｎｎ" and Cyrillic "Аnn" were
five reviewers: one person could give a label, its second opinion and the decision between
them. A request is now recorded under the first spelling its name was seen in. Existing
databases get the names their review labels and tasks hold, each reader's oldest spelling
first (by its first label, else by the task it was last seen on); the rows themselves are left
as they were written, so figures over labels from before still show each spelling apart.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07 00:10:00.000000
"""

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

from service.api_keys import name_key

revision: str = "0014"
down_revision: str | Sequence[str] | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Every reviewer name the queue holds, with when it was first seen: review labels (a user
# report's label carries its reporter, no reviewer), and the people tasks name.
_NAMES_SEEN = """
SELECT reviewer AS name, created_at AS at FROM label WHERE source = 'REVIEW'
UNION ALL SELECT first_reviewer, updated_at FROM review_task WHERE first_reviewer IS NOT NULL
UNION ALL SELECT second_reviewer, updated_at FROM review_task WHERE second_reviewer IS NOT NULL
UNION ALL SELECT leased_by, updated_at FROM review_task WHERE leased_by IS NOT NULL
UNION ALL SELECT skipped_by, updated_at FROM review_task WHERE skipped_by IS NOT NULL
"""


def upgrade() -> None:
    op.create_table(
        "reviewer",
        sa.Column("name_key", sa.String(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("first_seen", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("name_key"),
    )
    _record_known_reviewers(op.get_bind())


def _record_known_reviewers(bind: sa.Connection) -> None:
    rows = bind.execute(
        sa.text(f"SELECT name, MIN(at) FROM ({_NAMES_SEEN}) AS seen GROUP BY name")
    ).all()
    # A row without a time (none is written so) goes last: it is the least known.
    late = datetime.max.replace(tzinfo=UTC)
    first: dict[str, tuple[str, datetime | None]] = {}
    for name, at in sorted(rows, key=lambda row: (_aware(row[1]) or late, row[0])):
        first.setdefault(name_key(name), (name, at))
    for key, (name, at) in first.items():
        bind.execute(
            sa.text("INSERT INTO reviewer (name_key, name, first_seen) VALUES (:k, :n, :at)"),
            {"k": key, "n": name, "at": at},
        )


def _aware(at: datetime | str | None) -> datetime | None:
    """A time as SQLite or PostgreSQL returns it through a plain SQL query, in UTC."""
    if at is None:
        return None
    if isinstance(at, str):  # SQLite's text, "2026-12-01 10:00:00.000000[+00:00]"
        at = datetime.fromisoformat(at)
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def downgrade() -> None:
    op.drop_table("reviewer")
