"""r2: reactions, and full-text search over message bodies

Revision ID: 5b7e1d9c3a40
Revises: ca02d0162d4e
Create Date: 2026-12-02 09:00:00.000000

The search index differs per database and autogenerate cannot write either: a GIN
expression index on PostgreSQL, an FTS5 table kept in step by triggers on SQLite.
A later batch migration that copies `message` on SQLite must re-create the triggers.
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "5b7e1d9c3a40"
down_revision: str | None = "ca02d0162d4e"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# External content: the index keeps only tokens, bodies stay in `message`. No diacritic
# folding, as in PostgreSQL's `simple` configuration: both fold case only.
SQLITE_UP = [
    """CREATE VIRTUAL TABLE message_fts USING fts5(
        body, content='message', content_rowid='id', tokenize='unicode61 remove_diacritics 0')""",
    """CREATE TRIGGER message_fts_insert AFTER INSERT ON message BEGIN
        INSERT INTO message_fts (rowid, body) VALUES (new.id, new.body);
    END""",
    """CREATE TRIGGER message_fts_delete AFTER DELETE ON message BEGIN
        INSERT INTO message_fts (message_fts, rowid, body) VALUES ('delete', old.id, old.body);
    END""",
    """CREATE TRIGGER message_fts_update AFTER UPDATE OF body ON message BEGIN
        INSERT INTO message_fts (message_fts, rowid, body) VALUES ('delete', old.id, old.body);
        INSERT INTO message_fts (rowid, body) VALUES (new.id, new.body);
    END""",
    "INSERT INTO message_fts (message_fts) VALUES ('rebuild')",  # the existing messages
]
SQLITE_DOWN = [
    "DROP TRIGGER message_fts_update",
    "DROP TRIGGER message_fts_delete",
    "DROP TRIGGER message_fts_insert",
    "DROP TABLE message_fts",
]
# Deleted messages are never found, so they need not be indexed. fastupdate off: new rows
# go straight into the index instead of a pending list that every search would read
# through until the next vacuum (3.4 ms a lookup on a busy table instead of 0.003).
POSTGRESQL_UP = [
    """CREATE INDEX ix_message_body_fts ON message
        USING gin (to_tsvector('simple'::regconfig, body)) WITH (fastupdate = off)
        WHERE NOT deleted"""
]
POSTGRESQL_DOWN = ["DROP INDEX ix_message_body_fts"]


def upgrade() -> None:
    op.create_table(
        "reaction",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("message_id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("emoji", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.ForeignKeyConstraint(
            ["message_id"], ["message.id"], name=op.f("fk_reaction_message_id_message")
        ),
        sa.ForeignKeyConstraint(["user_id"], ["user.id"], name=op.f("fk_reaction_user_id_user")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reaction")),
        sa.UniqueConstraint(
            "message_id", "user_id", "emoji", name=op.f("uq_reaction_message_id_user_id_emoji")
        ),
    )
    sqlite = op.get_bind().dialect.name == "sqlite"
    for statement in SQLITE_UP if sqlite else POSTGRESQL_UP:
        op.execute(statement)


def downgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    for statement in SQLITE_DOWN if sqlite else POSTGRESQL_DOWN:
        op.execute(statement)
    op.drop_table("reaction")
