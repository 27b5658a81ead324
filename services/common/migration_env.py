"""Shared body of every `migrations/<service>/env.py` (online mode, psycopg driver)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool

from services.common.settings import Settings


def run_migrations(service: str) -> None:
    config = context.config
    url = config.get_main_option("sqlalchemy.url") or Settings().dsn(service, "psycopg")
    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=None,
                          version_table=f"alembic_version_{service}")
        with context.begin_transaction():
            context.run_migrations()
