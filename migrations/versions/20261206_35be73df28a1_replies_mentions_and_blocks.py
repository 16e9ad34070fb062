"""replies, mentions and blocks

Revision ID: 35be73df28a1
Revises: c282b3470d8c
Create Date: 2026-12-06 14:04:33.404561

On SQLite, `message.reply_to_id` and its foreign key are added in place: a batch
migration would copy `message` and lose the triggers of its search index. Taking the
column away again needs that copy, so the downgrade re-creates them.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "35be73df28a1"
down_revision: str | None = "c282b3470d8c"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

REPLY_FK = "fk_message_reply_to_id_message"
# As in the reactions_and_search migration.
SQLITE_FTS_TRIGGERS = [
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
]


def upgrade() -> None:
    op.create_table(
        "block",
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("blocked_id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["blocked_id"], ["user.id"], name=op.f("fk_block_blocked_id_user")),
        sa.ForeignKeyConstraint(["user_id"], ["user.id"], name=op.f("fk_block_user_id_user")),
        sa.PrimaryKeyConstraint("user_id", "blocked_id", name=op.f("pk_block")),
    )
    op.create_table(
        "mention",
        sa.Column("message_id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["message_id"], ["message.id"], name=op.f("fk_mention_message_id_message")
        ),
        sa.ForeignKeyConstraint(["user_id"], ["user.id"], name=op.f("fk_mention_user_id_user")),
        sa.PrimaryKeyConstraint("message_id", "user_id", name=op.f("pk_mention")),
    )
    op.create_index("ix_mention_user_id_message_id", "mention", ["user_id", "message_id"])
    if op.get_bind().dialect.name == "sqlite":
        op.execute(
            f"ALTER TABLE message ADD COLUMN reply_to_id INTEGER "
            f"CONSTRAINT {REPLY_FK} REFERENCES message (id)"
        )
    else:
        op.add_column("message", sa.Column("reply_to_id", sa.Integer(), nullable=True))
        op.create_foreign_key(REPLY_FK, "message", "message", ["reply_to_id"], ["id"])


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        with op.batch_alter_table("message", recreate="always") as batch_op:
            batch_op.drop_column("reply_to_id")
        for statement in SQLITE_FTS_TRIGGERS:
            op.execute(statement)
    else:
        op.drop_constraint(REPLY_FK, "message", type_="foreignkey")
        op.drop_column("message", "reply_to_id")
    op.drop_index("ix_mention_user_id_message_id", table_name="mention")
    op.drop_table("mention")
    op.drop_table("block")
