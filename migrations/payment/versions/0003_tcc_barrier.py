"""the TCC barrier, and frozen money

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

from migrations import tcc_schema

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    tcc_schema.create_barrier_v1()
    op.add_column("customers", sa.Column("frozen_cents", sa.BigInteger, nullable=False, server_default="0"))
    op.create_check_constraint("frozen_never_negative", "customers", "frozen_cents >= 0")


def downgrade() -> None:
    op.drop_column("customers", "frozen_cents")
    tcc_schema.drop_barrier_v1()
