"""channel outbox: in_doubt, so a send in doubt keeps its pending reason

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-23 16:45:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("channel_outbox", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("in_doubt", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
    # Before this column, the mark was the reason: "sending" while pending, "resent" once
    # sent again.
    op.execute(
        "UPDATE channel_outbox SET in_doubt = true, reason = NULL "
        "WHERE status = 'pending' AND reason = 'sending'"
    )
    op.execute("UPDATE channel_outbox SET in_doubt = true WHERE reason = 'resent'")


def downgrade() -> None:
    op.execute("UPDATE channel_outbox SET reason = 'sending' WHERE status = 'pending' AND in_doubt")
    with op.batch_alter_table("channel_outbox", schema=None) as batch_op:
        batch_op.drop_column("in_doubt")
