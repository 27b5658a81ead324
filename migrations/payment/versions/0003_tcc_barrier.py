"""the TCC barrier, and frozen money

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # one row per TCC step taken here; the key lets each step in once (see services/runtime/tcc.py)
    op.create_table(
        "tcc_barrier",
        sa.Column("gid", sa.Text, primary_key=True),
        sa.Column("branch", sa.Text, primary_key=True),
        sa.Column("op", sa.Text, primary_key=True),
        sa.Column("outcome", sa.Text, nullable=False),
        sa.Column("held", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("detail", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint("op IN ('try', 'confirm', 'cancel')", name="tcc_op"),
    )
    op.add_column("customers", sa.Column("frozen_cents", sa.BigInteger, nullable=False, server_default="0"))
    op.create_check_constraint("frozen_never_negative", "customers", "frozen_cents >= 0")


def downgrade() -> None:
    op.drop_column("customers", "frozen_cents")
    op.drop_table("tcc_barrier")
