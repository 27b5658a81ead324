"""half messages and their history

Revision ID: 0001
Revises:
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

STATES = ("HALF", "COMMITTED", "DELIVERED", "ROLLED_BACK", "PARKED")


def upgrade() -> None:
    op.create_table(
        "half_messages",
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("topic", sa.Text, nullable=False),
        sa.Column("body", JSONB, nullable=False),
        sa.Column("producer", sa.Text, nullable=False),
        sa.Column("check_url", sa.Text, nullable=False),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        # check-backs: how many were answered UNKNOWN (or not at all), and when the next one is due
        sa.Column("checks", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_check_at", sa.DateTime(timezone=True), nullable=False),
        # delivery: attempts RabbitMQ refused (outages never count), and when the next one is due
        sa.Column("delivery_attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_delivery_at", sa.DateTime(timezone=True)),
        # the broker process working on it (a check-back or a delivery) and until when
        sa.Column("claimed_by", sa.Text),
        sa.Column("claimed_until", sa.DateTime(timezone=True)),
        sa.Column("last_error", sa.Text),
        sa.CheckConstraint(f"state IN {STATES}", name="known_state"),
        sa.CheckConstraint("checks >= 0 AND delivery_attempts >= 0", name="counts_never_negative"),
    )
    op.create_index("half_messages_due_checks", "half_messages", ["next_check_at"],
                    postgresql_where=sa.text("state = 'HALF'"))
    op.create_index("half_messages_due_deliveries", "half_messages", ["next_delivery_at"],
                    postgresql_where=sa.text("state = 'COMMITTED'"))
    op.create_index("half_messages_by_state", "half_messages", ["state", "created_at", "id"])
    op.create_table(
        "half_message_history",
        sa.Column("seq", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("message_id", sa.Uuid, sa.ForeignKey("half_messages.id", ondelete="CASCADE"), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("clock_timestamp()")),
        sa.Column("kind", sa.Text, nullable=False),  # transition | check | delivery
        sa.Column("detail", JSONB, nullable=False),
    )
    op.create_index("half_message_history_of", "half_message_history", ["message_id", "seq"])


def downgrade() -> None:
    op.drop_table("half_message_history")
    op.drop_table("half_messages")
