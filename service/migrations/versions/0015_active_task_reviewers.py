"""Tasks still in the queue name their reviewers under the spelling 0014 recorded.

0014 recorded each person under their oldest spelling and left every row as written. A task
open or leased at the upgrade kept the spelling its reviewers had used on it, and whoever may
act on a task is decided by comparing names as written: a reviewer who had used two
spellings ("Ann", then "ann") could no longer resume her lease, and could give the second
opinion on her own first label, once her requests were recorded as "Ann". The names on open
and leased tasks are rewritten to the recorded spelling; labelled and shed tasks, and labels,
keep theirs (the figures over them show each spelling apart, as 0014 says).

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-07 03:10:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from service.api_keys import name_key

revision: str = "0015"
down_revision: str | Sequence[str] | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The task's columns that name a person, each compared with the acting reviewer as written.
_PEOPLE = ("first_reviewer", "second_reviewer", "leased_by", "skipped_by")
# Enum members as SQLAlchemy stores them (by name), as 0014's 'REVIEW'.
_ACTIVE = "status IN ('OPEN', 'LEASED')"


def upgrade() -> None:
    bind = op.get_bind()
    recorded = dict(bind.execute(sa.text("SELECT name_key, name FROM reviewer")).all())
    for column in _PEOPLE:
        written = bind.execute(
            sa.text(
                f"SELECT DISTINCT {column} FROM review_task "
                f"WHERE {column} IS NOT NULL AND {_ACTIVE}"
            )
        ).scalars()
        for name in list(written):
            spelling = recorded.get(name_key(name))
            if spelling is not None and spelling != name:
                bind.execute(
                    sa.text(
                        f"UPDATE review_task SET {column} = :spelling "
                        f"WHERE {column} = :name AND {_ACTIVE}"
                    ),
                    {"spelling": spelling, "name": name},
                )


def downgrade() -> None:
    # Which spelling each task held is not kept; the recorded one serves the older code too.
    pass
