"""the 2PC and 3PC outcomes in the barrier

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

from migrations import tcc_schema

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    tcc_schema.barrier_ops_v2()


def downgrade() -> None:
    tcc_schema.barrier_ops_v1()
