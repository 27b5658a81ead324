"""orders, order_items, outbox and inbox

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
        "orders",
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("customer_id", sa.Text, nullable=False),
        sa.Column("pattern", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("reason", sa.Text),
        sa.Column("total_cents", sa.BigInteger, nullable=False),
        sa.Column("stock_status", sa.Text, nullable=False),
        sa.Column("payment_status", sa.Text, nullable=False),
        sa.Column("idempotency_key", sa.Text, unique=True),
        sa.Column("request_hash", sa.Text),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("decided_at", sa.DateTime(timezone=True)),
        sa.CheckConstraint("status IN ('PENDING', 'PAID', 'CANCELLED')", name="order_status"),
    )
    op.create_index("orders_status", "orders", ["status"])
    op.create_table(
        "order_items",
        sa.Column("order_id", sa.Uuid, sa.ForeignKey("orders.id"), primary_key=True),
        sa.Column("sku", sa.Text, primary_key=True),
        sa.Column("qty", sa.Integer, nullable=False),
        sa.Column("unit_price_cents", sa.BigInteger, nullable=False),
    )
    messaging_schema.create_v1("order")


def downgrade() -> None:
    messaging_schema.drop_v1()
    op.drop_table("order_items")
    op.drop_table("orders")
