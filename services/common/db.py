"""Databases: creation, migration and the async engine each service uses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
from alembic import command
from alembic.config import Config
from psycopg import sql
from sqlalchemy.engine import CursorResult
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.sql import Executable

from services.common.settings import Settings
from services.common.tracing import trace_engine

ROOT = Path(__file__).resolve().parents[2]


def ensure_database(settings: Settings, service: str) -> None:
    """Create the service's database when it does not exist yet."""
    name = settings.database(service)
    with psycopg.connect(f"{settings.pg.rstrip('/')}/postgres", autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def drop_database(settings: Settings, service: str) -> None:
    name = settings.database(service)
    with psycopg.connect(f"{settings.pg.rstrip('/')}/postgres", autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def migrate(settings: Settings, service: str) -> None:
    """Bring the service's database to the newest Alembic revision (creating it first)."""
    ensure_database(settings, service)
    cfg = Config(str(ROOT / "alembic.ini"), ini_section=service)
    cfg.set_main_option("script_location", str(ROOT / "migrations" / service))
    cfg.set_main_option("sqlalchemy.url", settings.dsn(service, "psycopg").replace("%", "%%"))  # ini escaping
    cfg.attributes["configure_logger"] = False
    command.upgrade(cfg, "head")


def make_engine(settings: Settings, service: str, pool_size: int = 10) -> AsyncEngine:
    """The service's engine; its statements are spans of the trace at hand."""
    engine = create_async_engine(settings.dsn(service), pool_size=pool_size, max_overflow=pool_size)
    trace_engine(engine)
    return engine


async def execute_alone(engine: AsyncEngine, statement: Executable, params: Any = None) -> CursorResult[Any]:
    """Run one statement as a transaction of its own: PostgreSQL makes a single statement atomic, so it is sent
    without BEGIN and COMMIT (one round trip instead of three). Its result is buffered."""
    async with engine.connect() as conn:
        conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
        return await conn.execute(statement, params)
