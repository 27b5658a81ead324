"""outbox states checked, relay leases, pruning indexes

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""

from migrations import messaging_schema

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    messaging_schema.upgrade_v2()


def downgrade() -> None:
    messaging_schema.downgrade_v2()
