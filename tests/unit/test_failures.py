"""Whose fault an error is: the world's errors are waited out, the message's own are counted."""

import asyncpg
import pytest
import sqlalchemy as sa
from asyncpg.exceptions import _base as asyncpg_base

from services.common.faults import InjectedFault
from services.messaging.connection import MAX_BACKOFF, capped_backoff
from services.messaging.failures import is_transient
from services.messaging.publisher import BrokerUnavailable


def wrapped(cls: type[sa.exc.DBAPIError], orig: BaseException) -> sa.exc.DBAPIError:
    """An error as SQLAlchemy raises it around a driver error."""
    try:
        raise orig
    except BaseException as driver_error:
        return cls("SELECT 1", {}, driver_error)


def server_error(sqlstate: str) -> asyncpg.PostgresError:
    return asyncpg.PostgresError.new({"C": sqlstate, "M": f"server said {sqlstate}"})


P = pytest.param


@pytest.mark.parametrize("error", [
    P(ConnectionRefusedError(111, "connection refused"), id="connection-refused"),
    P(TimeoutError(), id="timeout"),
    P(InjectedFault("injected error"), id="injected-error"),
    P(BrokerUnavailable("not connected"), id="broker-unavailable"),
    P(sa.exc.TimeoutError("QueuePool limit of size 10 overflow 10 reached"), id="pool-timeout"),
    P(wrapped(sa.exc.DBAPIError, server_error("40P01")), id="deadlock"),
    P(wrapped(sa.exc.DBAPIError, server_error("40001")), id="serialization-failure"),
    P(wrapped(sa.exc.DBAPIError, server_error("57P01")), id="admin-shutdown"),
    P(wrapped(sa.exc.DBAPIError, server_error("57P03")), id="starting-up"),
    P(wrapped(sa.exc.DBAPIError, server_error("53300")), id="too-many-connections"),
    P(wrapped(sa.exc.InterfaceError, asyncpg.exceptions.ConnectionDoesNotExistError("closed")), id="connection-lost"),
])
def test_the_worlds_errors_are_transient(error):
    assert is_transient(error)


@pytest.mark.parametrize("error", [
    P(wrapped(sa.exc.InterfaceError, asyncpg_base.DataError("invalid input for query argument $1: 'three'")),
      id="asyncpg-client-side-data-error"),
    P(wrapped(sa.exc.DBAPIError, server_error("22000")), id="asyncpg-0.30-client-side-data-error"),
    P(wrapped(sa.exc.DataError, server_error("22P02")), id="invalid-input-syntax"),
    P(wrapped(sa.exc.IntegrityError, server_error("23505")), id="unique-violation"),
    P(wrapped(sa.exc.ProgrammingError, server_error("42601")), id="syntax-error"),
    P(KeyError("payload has no items"), id="handler-key-error"),
    P(LookupError("event for unknown order"), id="unknown-order"),
])
def test_the_messages_own_errors_are_not(error):
    assert not is_transient(error)


def test_backoff_stays_capped_however_many_failures():
    assert capped_backoff(1) == 0.1 and capped_backoff(5) == 1.6
    assert capped_backoff(100_000) == MAX_BACKOFF  # no OverflowError after a long outage
