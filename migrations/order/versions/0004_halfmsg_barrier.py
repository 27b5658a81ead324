"""the halfmsg pattern's barrier: one row per order whose half message was decided here

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The order's local transaction inserts (id, 'COMMITTED'); a check-back past the deadline inserts
    # (id, 'ROLLED_BACK'). The primary key lets only one of them in, and a check-back's insert waits for a
    # local transaction still running: the answer never depends on timing (DTM's barrier, for messages).
    op.create_table(
        "halfmsg_barrier",
        sa.Column("order_id", sa.Uuid, primary_key=True),
        sa.Column("outcome", sa.Text, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint("outcome IN ('COMMITTED', 'ROLLED_BACK')", name="halfmsg_outcome"),
    )


def downgrade() -> None:
    op.drop_table("halfmsg_barrier")
