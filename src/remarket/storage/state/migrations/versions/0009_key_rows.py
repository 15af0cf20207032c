"""pii_keys in key order, found by handle through pii_key_handles (filled in bulk)

A new key row used to land at a random place of the (handle, key_id) primary key: about
one 4 KiB page written per new device, on the collect path. Keys are now stored in key_id
order (a per-process prefix and a counter: appends), and the handle index lives in its
own table, filled from the rows not yet ``indexed`` by a background step.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-23 16:45:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.schema import SchemaItem

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True)


def _postgresql() -> bool:
    return op.get_bind().dialect.name == "postgresql"


def _keys_table(name: str, *, indexed: bool) -> None:
    """pii_keys as of this revision (``indexed``) or the one before. PostgreSQL names
    constraints per schema: a table made beside the old one names its key after itself
    until it is renamed; SQLite keeps the name in the table's own definition."""
    pk = f"pk_{name}" if _postgresql() else "pk_pii_keys"
    columns: list[SchemaItem] = [
        sa.Column("handle", sa.String(length=40), nullable=False),
        sa.Column("key_id", sa.String(length=16), nullable=False),
        sa.Column("secret", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
    ]
    if indexed:
        columns.append(
            sa.Column("indexed", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
        key = sa.PrimaryKeyConstraint("key_id", "handle", name=op.f(pk))
    else:
        key = sa.PrimaryKeyConstraint("handle", "key_id", name=op.f(pk))
    op.create_table(name, *columns, key, sqlite_with_rowid=not indexed)


def upgrade() -> None:
    _keys_table("pii_keys_v9", indexed=True)
    op.execute(
        "INSERT INTO pii_keys_v9 (handle, key_id, secret, created_at, indexed)"
        " SELECT handle, key_id, secret, created_at, true FROM pii_keys"
    )
    op.create_table(
        "pii_key_handles",
        sa.Column("handle", sa.String(length=40), nullable=False),
        sa.Column("key_id", sa.String(length=16), nullable=False),
        sa.PrimaryKeyConstraint("handle", "key_id", name=op.f("pk_pii_key_handles")),
        sqlite_with_rowid=False,
    )
    op.execute("INSERT INTO pii_key_handles (handle, key_id) SELECT handle, key_id FROM pii_keys")
    op.drop_table("pii_keys")
    op.rename_table("pii_keys_v9", "pii_keys")
    if _postgresql():
        op.execute("ALTER TABLE pii_keys RENAME CONSTRAINT pk_pii_keys_v9 TO pk_pii_keys")
    op.create_index(
        op.f("ix_pii_keys_key_id"),
        "pii_keys",
        ["key_id"],
        sqlite_where=sa.text("indexed = 0"),
        postgresql_where=sa.text("NOT indexed"),
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_pii_keys_key_id"), table_name="pii_keys")
    op.rename_table("pii_keys", "pii_keys_v9")
    if _postgresql():
        op.execute("ALTER TABLE pii_keys_v9 RENAME CONSTRAINT pk_pii_keys TO pk_pii_keys_v9")
    _keys_table("pii_keys", indexed=False)
    op.execute(
        "INSERT INTO pii_keys (handle, key_id, secret, created_at)"
        " SELECT handle, key_id, secret, created_at FROM pii_keys_v9"
    )
    op.drop_table("pii_keys_v9")
    op.drop_table("pii_key_handles")
