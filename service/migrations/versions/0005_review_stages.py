"""Review stages: second opinions on a sample of tasks, and adjudication when two differ.

A sample of tasks gets a second, independent label, and a third reviewer decides when the two
differ. Existing tasks are at stage `first`; labelled ones get the label that closed them
(`final_label_id`), the latest label written for the task.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 17:39:19.436760
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

STAGE = sa.Enum("FIRST", "SECOND", "ADJUDICATE", name="reviewstage")


def upgrade() -> None:
    # PostgreSQL keeps the enum as a type of its own, which adding a column does not create.
    STAGE.create(op.get_bind(), checkfirst=True)
    with op.batch_alter_table("review_task", schema=None) as batch_op:
        batch_op.add_column(sa.Column("stage", STAGE, nullable=False, server_default="FIRST"))
        batch_op.add_column(sa.Column("first_label_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("first_reviewer", sa.String(), nullable=True))
        batch_op.add_column(sa.Column("second_label_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("second_reviewer", sa.String(), nullable=True))
        batch_op.add_column(sa.Column("final_label_id", sa.Integer(), nullable=True))
    op.execute(
        "UPDATE review_task SET final_label_id = "
        "(SELECT max(label.id) FROM label WHERE label.task_id = review_task.id) "
        "WHERE status = 'LABELED'"
    )


def downgrade() -> None:
    # Older code knows one label per task: tasks waiting for a second opinion or a decision
    # would read as open first-stage tasks and lose that state.
    waiting = op.get_bind().execute(
        sa.text("SELECT count(*) FROM review_task WHERE stage != 'FIRST' AND status != 'LABELED'")
    )
    if waiting.scalar_one():
        raise RuntimeError("review tasks wait for a second opinion or a decision; label them first")
    with op.batch_alter_table("review_task", schema=None) as batch_op:
        batch_op.drop_column("final_label_id")
        batch_op.drop_column("second_reviewer")
        batch_op.drop_column("second_label_id")
        batch_op.drop_column("first_reviewer")
        batch_op.drop_column("first_label_id")
        batch_op.drop_column("stage")
    STAGE.drop(op.get_bind(), checkfirst=True)
