"""Whose fault is an error: the world's (a server unreachable or restarting: wait it out, never count it)
or the message's own (bad data, a handler bug: count it, and park the message once it keeps failing)."""

from __future__ import annotations

from collections.abc import Iterator

import asyncpg
import sqlalchemy as sa

from services.common.faults import InjectedFault

# SQLSTATE classes that go away by themselves: connection exceptions, transaction rollbacks (deadlock,
# serialization failure), insufficient resources (too many connections), operator intervention (shutdown,
# "the database system is starting up", a cancelled statement).
TRANSIENT_SQLSTATE_CLASSES = frozenset({"08", "40", "53", "57"})


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """The error, the driver error SQLAlchemy wrapped, and their causes."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo += [getattr(e, "orig", None), e.__cause__, e.__context__]


def is_transient(exc: BaseException) -> bool:
    """True when retrying later can succeed without anything changing in the message."""
    errors = list(_chain(exc))
    for e in errors:
        # asyncpg refuses a parameter it cannot encode before sending it: bad input, never transient
        if isinstance(e, asyncpg.InterfaceError) and isinstance(e, ValueError):
            return False
        sqlstate = getattr(e, "sqlstate", None)
        if isinstance(sqlstate, str) and len(sqlstate) == 5:
            return sqlstate[:2] in TRANSIENT_SQLSTATE_CLASSES
    for e in errors:
        if isinstance(e, sa.exc.DBAPIError) and e.connection_invalidated:
            return True
        # sa.exc.TimeoutError: no pooled connection came free in time, the database is slow, not the message
        if isinstance(e, OSError | TimeoutError | InjectedFault | sa.exc.TimeoutError | sa.exc.OperationalError
                      | sa.exc.InterfaceError | asyncpg.PostgresConnectionError):
            return True
    return False
