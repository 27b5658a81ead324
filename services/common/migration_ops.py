"""Migration operations shared by the service databases: the outbox, inbox and relay wake-up trigger."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from services.common.outbox import messaging_tables, notify_channel


def create_messaging_tables(service: str) -> None:
    outbox, inbox = messaging_tables(sa.MetaData())
    for table in (outbox, inbox):
        table.create(bind=op.get_bind())
    op.create_index("outbox_due", "outbox", ["next_attempt_at"], postgresql_where=sa.text("status = 'PENDING'"))
    op.create_index("outbox_order", "outbox", ["order_id"])
    # One NOTIFY per inserting statement wakes the relay; polling covers a missed notification.
    op.execute(f"""
        CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN PERFORM pg_notify('{notify_channel(service)}', ''); RETURN NULL; END $$;
        CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
        FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();
    """)


def drop_messaging_tables() -> None:
    op.execute("DROP TRIGGER IF EXISTS outbox_notify ON outbox; DROP FUNCTION IF EXISTS outbox_notify();")
    op.drop_table("inbox")
    op.drop_table("outbox")
