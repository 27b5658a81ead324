"""the TCC barrier

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from migrations import tcc_schema

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    tcc_schema.create_barrier_v1()


def downgrade() -> None:
    tcc_schema.drop_barrier_v1()
