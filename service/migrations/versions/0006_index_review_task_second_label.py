"""Index review_task.second_label_id, so the overlap's pairs are read without a table scan.

/metrics counts the contents labelled twice (agreement and kappa) at every scrape; with the
index that read is proportional to the pairs, not to every task ever queued.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 22:40:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("review_task", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_review_task_second_label_id"), ["second_label_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("review_task", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_review_task_second_label_id"))
