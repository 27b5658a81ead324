"""a captured payment is CAPTURED in the order service too; the participants' answers are checked

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("UPDATE orders SET payment_status = 'CAPTURED' WHERE payment_status = 'CHARGED'")
    op.create_check_constraint("order_stock_status", "orders",
                               "stock_status IN ('PENDING', 'RESERVED', 'REJECTED', 'RELEASED')")
    op.create_check_constraint("order_payment_status", "orders",
                               "payment_status IN ('PENDING', 'CAPTURED', 'FAILED', 'REFUNDED')")


def downgrade() -> None:
    op.drop_constraint("order_payment_status", "orders", type_="check")
    op.drop_constraint("order_stock_status", "orders", type_="check")
    op.execute("UPDATE orders SET payment_status = 'CHARGED' WHERE payment_status = 'CAPTURED'")
