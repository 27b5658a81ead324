"""The outbox and inbox every service database has, frozen revision by revision.

A function here is never edited once released: a change to the schema is a new function, called by a new
revision of each service's environment."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB


def create_v1(service: str) -> None:
    """Revision 0001: outbox and inbox, the relay's due index and its NOTIFY trigger."""
    op.create_table(
        "outbox",
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("order_id", sa.Uuid),
        sa.Column("routing_key", sa.Text, nullable=False),
        sa.Column("envelope", JSONB, nullable=False),
        sa.Column("status", sa.Text, nullable=False, server_default="PENDING"),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("last_error", sa.Text),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("sent_at", sa.DateTime(timezone=True)),
    )
    op.create_table(
        "inbox",
        sa.Column("message_id", sa.Uuid, primary_key=True),
        sa.Column("type", sa.Text, nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )
    op.create_index("outbox_due", "outbox", ["next_attempt_at"], postgresql_where=sa.text("status = 'PENDING'"))
    op.create_index("outbox_order", "outbox", ["order_id"])
    # One NOTIFY per inserting statement wakes the relay; polling covers a missed notification.
    op.execute(f"""
        CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN PERFORM pg_notify('{service}_outbox', ''); RETURN NULL; END $$;
        CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
        FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();
    """)


def drop_v1() -> None:
    op.execute("DROP TRIGGER IF EXISTS outbox_notify ON outbox; DROP FUNCTION IF EXISTS outbox_notify();")
    op.drop_table("inbox")
    op.drop_table("outbox")


def upgrade_v2() -> None:
    """Revision 0002: the outbox states as a CHECK constraint, the relay's lease, and the indexes pruning uses."""
    op.create_check_constraint("outbox_status", "outbox", "status IN ('PENDING', 'SENT', 'FAILED')")
    op.add_column("outbox", sa.Column("claimed_by", sa.Text))
    op.add_column("outbox", sa.Column("claimed_until", sa.DateTime(timezone=True)))
    op.create_index("outbox_sent", "outbox", ["sent_at"], postgresql_where=sa.text("status = 'SENT'"))
    op.create_index("inbox_received", "inbox", ["received_at"])


def downgrade_v2() -> None:
    op.drop_index("inbox_received", "inbox")
    op.drop_index("outbox_sent", "outbox")
    op.drop_column("outbox", "claimed_until")
    op.drop_column("outbox", "claimed_by")
    op.drop_constraint("outbox_status", "outbox", type_="check")
