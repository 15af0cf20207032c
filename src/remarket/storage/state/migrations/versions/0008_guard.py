"""abuse guard and retention: block lists, retention windows, bot and anomaly records

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-23 08:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "guard_blocks",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("network", sa.String(length=64), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("created_by", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_guard_blocks")),
        sa.UniqueConstraint("network", name=op.f("uq_guard_blocks_network")),
    )
    op.create_table(
        "guard_counters",
        sa.Column("day", sa.String(length=10), nullable=False),
        sa.Column("source_id", sa.String(length=32), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("day", "source_id", "kind", name=op.f("pk_guard_counters")),
    )
    op.create_table(
        "guard_anomalies",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("subject", sa.String(length=512), nullable=False),
        sa.Column("source_id", sa.String(length=32), nullable=False),
        sa.Column("window_start", _TS, nullable=False),
        sa.Column("baseline", sa.Integer(), nullable=False),
        sa.Column("threshold", sa.Integer(), nullable=False),
        sa.Column("detected_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_guard_anomalies")),
    )
    with op.batch_alter_table("guard_anomalies", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_guard_anomalies_subject"), ["subject"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_guard_anomalies_detected_at"), ["detected_at"], unique=False
        )
    op.create_table(
        "retention_rules",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("source_id", sa.String(length=32), nullable=False),
        sa.Column("event_type", sa.String(length=16), nullable=False),
        sa.Column("days", sa.Integer(), nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_retention_rules")),
        sa.UniqueConstraint(
            "source_id", "event_type", name=op.f("uq_retention_rules_source_id_event_type")
        ),
    )


def downgrade() -> None:
    op.drop_table("retention_rules")
    with op.batch_alter_table("guard_anomalies", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_guard_anomalies_detected_at"))
        batch_op.drop_index(batch_op.f("ix_guard_anomalies_subject"))
    op.drop_table("guard_anomalies")
    op.drop_table("guard_counters")
    op.drop_table("guard_blocks")
