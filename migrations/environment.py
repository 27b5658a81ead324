"""The body of every `migrations/<service>/env.py` (online mode, psycopg driver)."""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import create_engine, pool


def run_migrations(service: str) -> None:
    config = context.config
    url = config.get_main_option("sqlalchemy.url")
    if not url:  # run by the alembic command: the same variables as the services
        server = os.environ.get("TXLAB_PG", "postgresql://postgres@127.0.0.1:5432").split("://", 1)[1].rstrip("/")
        url = f"postgresql+psycopg://{server}/{os.environ.get('TXLAB_DB_PREFIX', 'txlab')}_{service}"
    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=None,
                          version_table=f"alembic_version_{service}")
        with context.begin_transaction():
            context.run_migrations()
