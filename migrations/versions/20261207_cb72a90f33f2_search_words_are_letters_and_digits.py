"""search: a word is a run of letters and digits on PostgreSQL too

Revision ID: cb72a90f33f2
Revises: 3bb6467ee7a1
Create Date: 2026-12-07 09:09:23.587389

PostgreSQL's parser kept "3.14", "ada@example.com" or "/usr/bin" as one word, which a
search for its parts never met: the index now reads the body with anything but letters and
digits made spaces, as the search does. Written by hand: autogenerate would drop the index
on SQLite too, which has none (its FTS5 tokenizer already splits words so).
"""

from collections.abc import Sequence

from alembic import op

revision: str = "cb72a90f33f2"
down_revision: str | None = "3bb6467ee7a1"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def search_index(body: str) -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP INDEX ix_message_body_fts")
        op.execute(
            f"""CREATE INDEX ix_message_body_fts ON message
            USING gin (to_tsvector('simple'::regconfig, {body})) WITH (fastupdate = off)
            WHERE NOT deleted"""
        )


def upgrade() -> None:
    search_index("regexp_replace(body, '[^[:alnum:]]+', ' ', 'g')")


def downgrade() -> None:
    search_index("body")
