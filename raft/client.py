"""An asyncio client for the replicated KV store that follows the leader and makes writes exactly-once.

Every write carries this client's id and a fresh sequence number. When the answer is lost (the leader
died, a timeout, a redirect mid-failover) the client retries the *same* sequence number on whichever node
leads now; the replicated session table answers a retry of an already-applied write with its first
outcome instead of applying it twice. Writes from one client are therefore issued one at a time (an
older sequence number arriving after a newer one could no longer be answered); use one client per
concurrent writer.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any
from urllib.parse import quote

import aiohttp


class KVError(RuntimeError):
    """The cluster answered in a way no retry can fix (bad request, stale sequence number)."""


class Unavailable(KVError):
    """No node accepted the request before the deadline."""


_MISSING = object()


class KVClient:
    """Talks to whichever node leads; every method retries until the deadline across leader changes."""

    def __init__(self, urls: list[str], client_id: str | None = None, request_timeout: float = 3.0,
                 deadline: float = 20.0) -> None:
        """`urls`: every node's base URL. A fixed `client_id` must not be reused by two live clients, nor
        by a restarted one (its sequence numbers start again at 1)."""
        if not urls:
            raise ValueError("need at least one node URL")
        self.urls = [u.rstrip("/") for u in urls]
        self.client_id = client_id or uuid.uuid4().hex
        self.deadline = deadline
        self._seq = 0
        self._leader = self.urls[0]
        self._write_lock = asyncio.Lock()
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=request_timeout))

    async def close(self) -> None:
        await self._session.close()

    async def __aenter__(self) -> KVClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------------------------ commands
    async def put(self, key: str, value: Any) -> None:
        """Store `value` (any JSON) under `key`; returns once committed."""
        await self._write("PUT", f"/kv/{_quote(key)}", {"value": value})

    async def delete(self, key: str) -> bool:
        """Delete `key`; True if it existed."""
        status, _ = await self._write("DELETE", f"/kv/{_quote(key)}", None, ok=(200, 404))
        return status == 200

    async def cas(self, key: str, expected: Any, value: Any) -> bool:
        """Set `key` to `value` only if it holds `expected` (None: absent); True if swapped."""
        body = {"expected": expected, "value": value}
        status, _ = await self._write("POST", f"/kv/{_quote(key)}/cas", body, ok=(200, 409))
        return status == 200

    async def get(self, key: str, default: Any = None) -> Any:
        """The value under `key` (linearizable), or `default` when absent."""
        status, body = await self._request("GET", f"/kv/{_quote(key)}", None, {}, ok=(200, 404))
        return body["value"] if status == 200 else default

    # ------------------------------------------------------------------------------------ plumbing
    async def _write(self, method: str, path: str, body: dict | None,
                     ok: tuple[int, ...] = (200,)) -> tuple[int, dict]:
        async with self._write_lock:
            self._seq += 1
            headers = {"X-Client-Id": self.client_id, "X-Request-Seq": str(self._seq)}
            return await self._request(method, path, body, headers, ok)

    async def _request(self, method: str, path: str, body: dict | None, headers: dict[str, str],
                       ok: tuple[int, ...]) -> tuple[int, dict]:
        loop = asyncio.get_running_loop()
        end = loop.time() + self.deadline
        data = json.dumps(body).encode() if body is not None else None
        hdrs = {**headers, "content-type": "application/json"}
        attempt = 0
        while loop.time() < end:
            url = self._leader
            try:
                async with self._session.request(method, url + path, data=data, headers=hdrs,
                                                 allow_redirects=False) as r:
                    status = r.status
                    answer = await r.json(content_type=None) or {}
            except (aiohttp.ClientError, TimeoutError):
                self._next_node(url)  # down, or the answer was lost: the same seq is safe to retry
                attempt += 1
                await asyncio.sleep(min(0.2, 0.01 * attempt))
                continue
            if status in ok:
                return status, answer
            if status == 307:
                self._leader = answer["location"][: -len(path)] if answer["location"].endswith(path) else url
                continue
            if status == 503:  # no leader yet, or the outcome is unknown: retry (same seq)
                if answer.get("leader") is None:
                    self._next_node(url)
                attempt += 1
                await asyncio.sleep(min(0.2, 0.01 * attempt))
                continue
            raise KVError(f"{method} {path}: HTTP {status}: {answer.get('error', answer)}")
        raise Unavailable(f"{method} {path}: no node answered within {self.deadline:g}s")

    def _next_node(self, failed: str) -> None:
        """Try the next configured node after `failed` (a redirect target may not be in the list)."""
        position = self.urls.index(failed) if failed in self.urls else -1
        self._leader = self.urls[(position + 1) % len(self.urls)]


def _quote(key: str) -> str:
    return quote(key, safe="")
