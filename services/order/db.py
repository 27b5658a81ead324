"""Order tables: orders with the progress of each participant, and their items."""

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import UUID

from services.common.outbox import messaging_tables

metadata = sa.MetaData()

orders = sa.Table(
    "orders", metadata,
    sa.Column("id", UUID(as_uuid=True), primary_key=True),
    sa.Column("customer_id", sa.Text, nullable=False),
    sa.Column("pattern", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),  # PENDING | PAID | CANCELLED
    sa.Column("reason", sa.Text),
    sa.Column("total_cents", sa.BigInteger, nullable=False),
    sa.Column("stock_status", sa.Text, nullable=False),  # PENDING | RESERVED | REJECTED | RELEASED
    sa.Column("payment_status", sa.Text, nullable=False),  # PENDING | CHARGED | FAILED | REFUNDED
    sa.Column("idempotency_key", sa.Text, unique=True),
    sa.Column("request_hash", sa.Text),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("decided_at", sa.DateTime(timezone=True)),
)

order_items = sa.Table(
    "order_items", metadata,
    sa.Column("order_id", UUID(as_uuid=True), sa.ForeignKey("orders.id"), primary_key=True),
    sa.Column("sku", sa.Text, primary_key=True),
    sa.Column("qty", sa.Integer, nullable=False),
    sa.Column("unit_price_cents", sa.BigInteger, nullable=False),
)

outbox, inbox = messaging_tables(metadata)
