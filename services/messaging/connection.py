"""One AMQP connection per process, kept open for as long as the process runs.

When RabbitMQ is unreachable or the connection drops, it is opened again with capped backoff (at most
`MAX_BACKOFF` seconds between tries, so work resumes within seconds of the server's return); each time it
opens, the whole topology is declared and every subscriber (the publisher's channel, the consumers) sets
itself up again on the new connection. Nothing is counted against a message while this happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable

import aio_pika
from aio_pika.abc import AbstractConnection
from aio_pika.exceptions import CONNECTION_EXCEPTIONS
from yarl import URL

from services.messaging.topology import Topology

log = logging.getLogger("txlab.messaging")

MAX_BACKOFF = 2.0
Setup = Callable[[AbstractConnection], Awaitable[None]]


HEARTBEAT_SECONDS = 10  # a half-open connection is noticed within about three of these


def capped_backoff(failures: int, base: float = 0.1, cap: float = MAX_BACKOFF) -> float:
    """`base` doubling with each failure, capped at `cap` (however many failures there were)."""
    return min(base * 2 ** min(max(failures - 1, 0), 30), cap)


def with_heartbeat(url: str) -> str:
    """The AMQP URL with a short heartbeat unless it names one."""
    parsed = URL(url)
    return url if "heartbeat" in parsed.query else str(parsed.update_query(heartbeat=HEARTBEAT_SECONDS))


def _resolve(future: asyncio.Future[None], *_: object) -> None:
    if not future.done():
        future.set_result(None)


class BrokerConnection:
    def __init__(self, url: str, topology: Topology, name: str) -> None:
        self.url = with_heartbeat(url)
        self.topology = topology
        self.name = name
        self._setups: list[Setup] = []
        self._connection: AbstractConnection | None = None
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._lost: asyncio.Future[None] | None = None
        self.opened = 0  # how many times a connection was opened (1 + reconnects)
        self.down_since: float | None = time.monotonic()

    @property
    def connected(self) -> bool:
        return self._connection is not None and not self._connection.is_closed

    async def subscribe(self, setup: Setup) -> None:
        """Run `setup` on every connection from now on (and at once, when one is open)."""
        self._setups.append(setup)
        if self._connection is not None:
            await setup(self._connection)

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Return once a connection is open (raise TimeoutError after `timeout` seconds)."""
        await asyncio.wait_for(self._ready.wait(), timeout)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"{self.name}-amqp")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None

    async def _open(self) -> tuple[AbstractConnection, asyncio.Future[None]]:
        """A connection with the topology declared and every subscriber set up, and a future that resolves
        when it is lost (or when a subscriber's channel is closed by the broker: reconnecting fixes both)."""
        connection = await aio_pika.connect(self.url, timeout=5, client_properties={"connection_name": self.name})
        lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        connection.close_callbacks.add(functools.partial(_resolve, lost))
        try:
            channel = await connection.channel()
            await asyncio.wait_for(self.topology.declare(channel), 30)
            await channel.close()
            self._lost = lost
            for setup in list(self._setups):
                await asyncio.wait_for(setup(connection), 30)
        except BaseException:
            with contextlib.suppress(*CONNECTION_EXCEPTIONS):
                await connection.close()
            raise
        return connection, lost

    def channel_lost(self, *_: object) -> None:
        """A subscriber's channel closed while its connection stayed up (the broker closed it): reconnect."""
        if self._lost is not None:
            _resolve(self._lost)

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                connection, lost = await self._open()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # unreachable, refused, or anything else: never give up
                failures += 1
                if failures == 1 or failures % 50 == 0:
                    log.warning("RabbitMQ at %s is unreachable (%r); retrying every %.1fs at most",
                                self.url.rsplit("@", 1)[-1].split("?")[0], exc, MAX_BACKOFF)
                await asyncio.sleep(capped_backoff(failures))
                continue
            if failures:
                log.warning("RabbitMQ reachable again after %.1fs; resuming", time.monotonic() - (self.down_since or 0))
            failures = 0
            self._connection, self.down_since = connection, None
            self.opened += 1
            self._ready.set()
            try:
                await lost
                log.warning("the connection to RabbitMQ was lost; reconnecting")
            finally:
                self._ready.clear()
                self._connection, self._lost, self.down_since = None, None, time.monotonic()
                with contextlib.suppress(Exception):
                    await connection.close()
