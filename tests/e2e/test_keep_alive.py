"""An idle keep-alive connection outlives every client's own expiry (httpx 5 s, aiohttp 15 s), so that the
client closes it first. Were the server to close it first, a request sent as it closes would meet a reset
(seen in a fuzz test: "Connection reset by peer" on a GET to inventory after its connection idled 5 s)."""

import asyncio
import re

import pytest

from services.run import KEEP_ALIVE_SECONDS

pytestmark = pytest.mark.e2e

IDLE_SECONDS = 6.0  # beyond uvicorn's default of 5 s and httpx's expiry


async def alive_twice(host: str, port: int) -> list[int]:
    """GET /alive on one connection, idle IDLE_SECONDS, GET /alive again on the same connection: the statuses
    (0 for a connection the server closed meanwhile)."""
    reader, writer = await asyncio.open_connection(host, port)
    statuses = []
    try:
        for turn in range(2):
            if turn:
                await asyncio.sleep(IDLE_SECONDS)
            writer.write(b"GET /alive HTTP/1.1\r\nHost: txlab\r\n\r\n")
            try:
                await writer.drain()
                head = await reader.readuntil(b"\r\n\r\n")
            except (ConnectionError, asyncio.IncompleteReadError):
                statuses.append(0)
                break
            statuses.append(int(head.split()[1]))
            length = re.search(rb"(?i)content-length:\s*(\d+)", head)
            await reader.readexactly(int(length.group(1)) if length else 0)
    finally:
        writer.close()
    return statuses


async def test_an_idle_connection_is_still_served_after_the_clients_own_expiry(settings, system):
    assert KEEP_ALIVE_SECONDS > 15  # aiohttp's keep-alive, the longest of the clients here
    names = ["order", "inventory", "payment", "admin", "broker"]
    results = await asyncio.gather(*(alive_twice(settings.host, settings.port(name)) for name in names))
    assert dict(zip(names, results, strict=True)) == {name: [200, 200] for name in names}
