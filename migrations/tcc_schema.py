"""The barrier table every participant database has (services/runtime/tcc.py and prepared.py), frozen revision by
revision like messaging_schema: a change is a new function, never an edit."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB


def create_barrier_v1() -> None:
    """One row per TCC step taken here; the key lets each step in once."""
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


def drop_barrier_v1() -> None:
    op.drop_table("tcc_barrier")


def barrier_ops_v2() -> None:
    """The 2PC and 3PC participants keep their branches' outcomes in the barrier too (op `xa`, `3pc`)."""
    op.drop_constraint("tcc_op", "tcc_barrier", type_="check")
    op.create_check_constraint("tcc_op", "tcc_barrier", "op IN ('try', 'confirm', 'cancel', 'xa', '3pc')")


def barrier_ops_v1() -> None:
    op.execute("DELETE FROM tcc_barrier WHERE op IN ('xa', '3pc')")
    op.drop_constraint("tcc_op", "tcc_barrier", type_="check")
    op.create_check_constraint("tcc_op", "tcc_barrier", "op IN ('try', 'confirm', 'cancel')")
