"""reactions keep their place

Revision ID: 3138e00f398e
Revises: cb72a90f33f2
Create Date: 2026-12-07 15:15:00.000000

An emoji's place on a message was its earliest row's: once its first user took it back, it
moved behind emoji first used after it. Each row now carries its emoji's place, copied from
the earlier rows. Written by hand: existing rows take their emoji's earliest row's id, which
orders them as before.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "3138e00f398e"
down_revision: str | None = "cb72a90f33f2"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("reaction", schema=None) as batch_op:
        batch_op.add_column(sa.Column("place", sa.Integer(), nullable=True))
    op.execute(
        "UPDATE reaction SET place = (SELECT min(earliest.id) FROM reaction AS earliest "
        "WHERE earliest.message_id = reaction.message_id AND earliest.emoji = reaction.emoji)"
    )
    with op.batch_alter_table("reaction", schema=None) as batch_op:
        batch_op.alter_column("place", existing_type=sa.Integer(), nullable=False)


def downgrade() -> None:
    with op.batch_alter_table("reaction", schema=None) as batch_op:
        batch_op.drop_column("place")
