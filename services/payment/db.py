"""Payment tables: customers with balances, and one payment row per order."""

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import UUID

from services.common.outbox import messaging_tables

metadata = sa.MetaData()

customers = sa.Table(
    "customers", metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("initial_cents", sa.BigInteger, nullable=False),
    sa.Column("balance_cents", sa.BigInteger, nullable=False),
)

payments = sa.Table(
    "payments", metadata,
    sa.Column("order_id", UUID(as_uuid=True), primary_key=True),
    sa.Column("customer_id", sa.Text, nullable=False),
    sa.Column("amount_cents", sa.BigInteger, nullable=False),
    sa.Column("status", sa.Text, nullable=False),  # CAPTURED | REFUNDED | FAILED
    sa.Column("reason", sa.Text),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("refunded_at", sa.DateTime(timezone=True)),
)

outbox, inbox = messaging_tables(metadata)
