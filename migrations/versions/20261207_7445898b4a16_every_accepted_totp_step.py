"""two-factor login remembers every step it accepted, not only the newest

Revision ID: 7445898b4a16
Revises: 3138e00f398e
Create Date: 2026-12-07 15:03:40.946676

With only the newest accepted step, a code of the step before it was refused although it
had never been used: enabling with the current code refused the previous step's code at
login. The newest step of each user is carried over, so no accepted code works again.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "7445898b4a16"
down_revision: str | None = "3138e00f398e"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "totp_step",
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["user.id"], name=op.f("fk_totp_step_user_id_user")),
        sa.PrimaryKeyConstraint("user_id", "step", name=op.f("pk_totp_step")),
    )
    op.execute(
        'INSERT INTO totp_step (user_id, step) SELECT id, totp_last_step FROM "user" '
        "WHERE totp_last_step IS NOT NULL"
    )
    with op.batch_alter_table("user", schema=None) as batch_op:
        batch_op.drop_column("totp_last_step")


def downgrade() -> None:
    with op.batch_alter_table("user", schema=None) as batch_op:
        batch_op.add_column(sa.Column("totp_last_step", sa.Integer(), nullable=True))
    op.execute(
        'UPDATE "user" SET totp_last_step = '
        '(SELECT max(step) FROM totp_step WHERE totp_step.user_id = "user".id)'
    )
    op.drop_table("totp_step")
