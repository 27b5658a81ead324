"""products, reservations, outbox and inbox

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
        "products",
        sa.Column("sku", sa.Text, primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("price_cents", sa.BigInteger, nullable=False),
        sa.Column("initial", sa.Integer, nullable=False),
        sa.Column("available", sa.Integer, nullable=False),
        sa.Column("reserved", sa.Integer, nullable=False, server_default="0"),
        sa.Column("sold", sa.Integer, nullable=False, server_default="0"),
        sa.CheckConstraint("available >= 0 AND reserved >= 0 AND sold >= 0", name="stock_never_negative"),
        sa.CheckConstraint("price_cents > 0", name="price_positive"),
    )
    op.create_table(
        "reservations",
        sa.Column("order_id", sa.Uuid, primary_key=True),
        sa.Column("sku", sa.Text, sa.ForeignKey("products.sku"), primary_key=True),
        sa.Column("qty", sa.Integer, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint("qty > 0", name="qty_positive"),
        sa.CheckConstraint("status IN ('RESERVED', 'SOLD', 'RELEASED')", name="reservation_status"),
    )
    messaging_schema.create_v1("inventory")


def downgrade() -> None:
    messaging_schema.drop_v1()
    op.drop_table("reservations")
    op.drop_table("products")
