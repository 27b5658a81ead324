"""An asyncio client for the replicated KV store that follows the leader and makes writes exactly-once.

Before its first write the client registers a session (`POST /sessions`, committed through the Raft
log). Every write carries that session's id and a fresh sequence number. When the answer is lost (the
leader died, a timeout, a redirect mid-failover) the client retries the *same* sequence number on
whichever node leads now; the replicated session table answers a retry of an already-applied write with
its first outcome instead of applying it twice. Writes from one client are therefore issued one at a time
(an older sequence number arriving after a newer one could no longer be answered); use one client per
concurrent writer.

Expired sessions (idle longer than the cluster's session timeout, or unknown to it): the cluster refuses
the request, without applying it, with "session expired", and the client then registers a new session.
What happens to the write that was refused depends on whether an earlier attempt of it may have reached
the cluster:

- No earlier attempt can have been applied (this was the first attempt, or every earlier one was
  refused before the leader proposed it: a redirect, no leader, connection refused): the write certainly
  did not happen, so it is sent again under the new session, transparently.
- An earlier attempt may have been applied (its answer was lost or timed out, or the leader could not
  tell whether it committed): its fate is unknown, and sending it again could apply it twice, so the
  method raises `SessionExpired` and does not retry it. The caller decides (e.g. read the key back).
  The client itself stays usable: the next call runs on the new session.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import quote

import aiohttp


class KVError(RuntimeError):
    """The cluster answered in a way no retry can fix (bad request, stale sequence number)."""


class Unavailable(KVError):
    """No node accepted the request before the deadline."""


class SessionExpired(KVError):
    """The session expired while a write's outcome was unknown: it may or may not have been applied, and it
    was not retried. The client has moved on to a new session."""


_EXPIRED = 410  # the API's status for a request refused because its session is unknown or expired


class KVClient:
    """Talks to whichever node leads; every method retries until the deadline across leader changes."""

    def __init__(self, urls: list[str], request_timeout: float = 3.0, deadline: float = 20.0) -> None:
        """`urls`: every node's base URL. The client registers its own session on its first write."""
        if not urls:
            raise ValueError("need at least one node URL")
        self.urls = [u.rstrip("/") for u in urls]
        self.deadline = deadline
        self.session_id: int | None = None  # registered lazily, and again after it expired
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
        status, body, _ = await self._request("GET", f"/kv/{_quote(key)}", None, {}, (200, 404), self._end())
        return body["value"] if status == 200 else default

    # ------------------------------------------------------------------------------------ plumbing
    async def _write(self, method: str, path: str, body: dict | None,
                     ok: tuple[int, ...] = (200,)) -> tuple[int, dict]:
        """Apply one write exactly once, or raise: SessionExpired (outcome unknown), Unavailable, KVError."""
        async with self._write_lock:
            end = self._end()
            while True:
                if self.session_id is None:
                    _, answer, _ = await self._request("POST", "/sessions", None, {}, (200,), end)
                    self.session_id, self._seq = int(answer["session"]), 0
                self._seq += 1
                headers = {"X-Session-Id": str(self.session_id), "X-Request-Seq": str(self._seq)}
                status, answer, maybe_applied = await self._request(method, path, body, headers,
                                                                    (*ok, _EXPIRED), end)
                if status != _EXPIRED:
                    return status, answer
                expired, self.session_id = self.session_id, None
                if maybe_applied:
                    raise SessionExpired(f"{method} {path}: session {expired} expired before the outcome was "
                                         "known; the write may or may not have been applied and was not retried")

    def _end(self) -> float:
        return asyncio.get_running_loop().time() + self.deadline

    async def _request(self, method: str, path: str, body: dict | None, headers: dict[str, str],
                       ok: tuple[int, ...], end: float) -> tuple[int, dict, bool]:
        """(status, answer, maybe_applied): retries until a status in `ok` or `end`; `maybe_applied` tells
        whether some earlier attempt may have reached the state machine (its outcome is unknown)."""
        loop = asyncio.get_running_loop()
        data = json.dumps(body).encode() if body is not None else None
        hdrs = {**headers, "content-type": "application/json"}
        attempt = 0
        maybe_applied = False
        while loop.time() < end:
            url = self._leader
            try:
                async with self._session.request(method, url + path, data=data, headers=hdrs,
                                                 allow_redirects=False) as r:
                    status = r.status
                    answer = await r.json(content_type=None) or {}
            except (aiohttp.ClientError, TimeoutError) as exc:
                # refused connection: never sent; anything else: the answer was lost (the same seq is safe
                # to retry while the session lives)
                maybe_applied |= not isinstance(exc, aiohttp.ClientConnectorError)
                self._next_node(url)
                attempt += 1
                await asyncio.sleep(min(0.2, 0.01 * attempt))
                continue
            if status in ok:
                return status, answer, maybe_applied
            if status == 307:  # certainly not applied there
                self._leader = answer["location"][: -len(path)] if answer["location"].endswith(path) else url
                continue
            if status == 503:  # no leader yet, or the outcome is unknown: retry (same seq)
                maybe_applied |= answer.get("outcome") == "unknown"
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
