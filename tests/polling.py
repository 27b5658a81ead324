"""The one way the tests wait for something to become true."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def eventually(probe: Callable[[], Awaitable[T] | T], within: float = 30.0, interval: float = 0.1,
                     what: str = "condition") -> T:
    """Call `probe` (a function or a coroutine function) until it returns something truthy and return that;
    fail after `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        value = probe()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {within:.0f}s (last: {value!r})")
        await asyncio.sleep(interval)
