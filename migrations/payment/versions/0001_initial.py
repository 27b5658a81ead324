"""customers, payments, outbox and inbox

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

from migrations import messaging_schema

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "customers",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("initial_cents", sa.BigInteger, nullable=False),
        sa.Column("balance_cents", sa.BigInteger, nullable=False),
        sa.CheckConstraint("balance_cents >= 0", name="balance_never_negative"),
    )
    op.create_table(
        "payments",
        sa.Column("order_id", sa.Uuid, primary_key=True),
        sa.Column("customer_id", sa.Text, nullable=False),
        sa.Column("amount_cents", sa.BigInteger, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("reason", sa.Text),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("refunded_at", sa.DateTime(timezone=True)),
        sa.CheckConstraint("status IN ('CAPTURED', 'REFUNDED', 'FAILED')", name="payment_status"),
    )
    messaging_schema.create_v1("payment")


def downgrade() -> None:
    messaging_schema.drop_v1()
    op.drop_table("payments")
    op.drop_table("customers")
