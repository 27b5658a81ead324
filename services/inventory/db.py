"""Inventory tables: products with stock counters, and one reservation row per (order, sku)."""

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import UUID

from services.common.outbox import messaging_tables

metadata = sa.MetaData()

products = sa.Table(
    "products", metadata,
    sa.Column("sku", sa.Text, primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("price_cents", sa.BigInteger, nullable=False),
    sa.Column("initial", sa.Integer, nullable=False),
    sa.Column("available", sa.Integer, nullable=False),
    sa.Column("reserved", sa.Integer, nullable=False, server_default="0"),
    sa.Column("sold", sa.Integer, nullable=False, server_default="0"),
)

reservations = sa.Table(
    "reservations", metadata,
    sa.Column("order_id", UUID(as_uuid=True), primary_key=True),
    sa.Column("sku", sa.Text, primary_key=True),
    sa.Column("qty", sa.Integer, nullable=False),
    sa.Column("status", sa.Text, nullable=False),  # RESERVED | SOLD | RELEASED
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
)

outbox, inbox = messaging_tables(metadata)
