"""The services' client of the coordinator: it finds the leader, follows its redirects and retries.

A follower answers 307 with the leader's URL, or 503 `{"leader": null}` during an election; an unreachable
replica is skipped. Every coordinator route is idempotent (a begin is keyed by gid), so a request whose
answer was lost is simply sent again, until `deadline` seconds have passed.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from typing import Any

import httpx

from services.common.settings import Settings


class CoordinatorUnavailable(RuntimeError):
    """No replica led, or none answered, before the deadline."""


class CoordinatorClient:
    def __init__(self, settings: Settings, http: httpx.AsyncClient, deadline: float = 10.0) -> None:
        self.urls = settings.coordinator_urls()
        self.http = http
        self.deadline = deadline
        self.headers = {"authorization": f"Bearer {settings.admin_token}"}
        self._leader = self.urls[0]

    async def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """The leader's answer to `method path` (any status but 307 and 503), retried across failovers."""
        end = time.monotonic() + self.deadline
        attempt = 0
        last = "no replica tried"
        while time.monotonic() < end:
            url = self._leader
            try:
                response = await self.http.request(method, url + path, headers=self.headers, **kwargs)
            except httpx.HTTPError as exc:
                last = f"{url}: {exc.__class__.__name__}"
                self._next(url)
            else:
                if response.status_code == 307 and "location" in response.headers:
                    self._leader = _origin(response.headers["location"])
                    continue
                if response.status_code != 503:
                    return response
                last = f"{url}: 503 {response.text[:200]}"
                if _body(response).get("leader", "") is None:
                    self._next(url)
            attempt += 1
            await asyncio.sleep(min(0.25, 0.02 * attempt))
        raise CoordinatorUnavailable(f"the coordinator did not answer {method} {path} within {self.deadline:g}s "
                                     f"({last})")

    def _next(self, failed: str) -> None:
        position = self.urls.index(failed) if failed in self.urls else -1
        self._leader = self.urls[(position + 1) % len(self.urls)]


def _origin(url: str) -> str:
    parts = httpx.URL(url)
    return f"{parts.scheme}://{parts.host}:{parts.port}"


def _body(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


async def _any_replica_answers(settings: Settings, http: httpx.AsyncClient) -> bool:
    for url in settings.coordinator_urls():
        try:
            await http.get(f"{url}/alive", timeout=1.0)
            return True
        except httpx.HTTPError:
            continue
    return False


def reset_records(settings: Settings) -> None:
    """Forget every global transaction: through the leader when the coordinator runs, else by removing the
    replicas' Raft data (they start empty). Raises CoordinatorUnavailable when replicas run but none leads."""

    async def run() -> None:
        async with httpx.AsyncClient(timeout=5.0) as http:
            if await _any_replica_answers(settings, http):
                response = await CoordinatorClient(settings, http, deadline=20.0).request("POST", "/internal/reset")
                if response.status_code != 200:
                    raise CoordinatorUnavailable(f"the coordinator refused to reset: {response.status_code} "
                                                 f"{response.text[:200]}")
                return
        if settings.coordinator_store == "raft":
            shutil.rmtree(settings.data_dir / "coordinator", ignore_errors=True)
        else:
            from services.coordinator.etcd import delete_records

            await delete_records(settings)

    asyncio.run(run())


def fetch(settings: Settings, path: str, params: dict[str, Any] | None = None, deadline: float = 5.0) -> Any:
    """GET `path` from the coordinator's leader (for synchronous callers such as the checker); its JSON, or
    None when no replica runs. Raises CoordinatorUnavailable when replicas run but none leads in time."""

    async def run() -> Any:
        async with httpx.AsyncClient(timeout=5.0) as http:
            if not await _any_replica_answers(settings, http):
                return None
            response = await CoordinatorClient(settings, http, deadline).request("GET", path, params=params)
            if response.status_code != 200:
                raise CoordinatorUnavailable(f"GET {path}: {response.status_code} {response.text[:200]}")
            return response.json()

    return asyncio.run(run())


def all_transactions(settings: Settings, pattern: str | None = None) -> list[dict[str, Any]] | None:
    """Every transaction's summary (paged through the leader), or None when no replica runs."""
    items: list[dict[str, Any]] = []
    while True:
        page = fetch(settings, "/transactions", {"limit": 1000, "offset": len(items)}
                     | ({"pattern": pattern} if pattern else {}))
        if page is None:
            return None
        items += page["items"]
        if not page["items"] or len(items) >= page["total"]:
            return items


async def leading_replica(settings: Settings, http: httpx.AsyncClient, after_term: int | None = None,
                          within: float = 30.0) -> dict[str, Any]:
    """The `/raft/status` of the replica that leads and has caught up, in a term after `after_term` when given
    (a new leadership: the replica that led before may win it again once restarted), once there is one;
    raises CoordinatorUnavailable after `within` seconds."""
    end = time.monotonic() + within
    while time.monotonic() < end:
        for name in settings.coordinators:
            try:
                status = (await http.get(f"{settings.url(name)}/raft/status", timeout=1.0)).json()
            except (httpx.HTTPError, ValueError):
                continue
            if (status["role"] == "leader" and status.get("leading_since")
                    and (after_term is None or status["term"] > after_term)):
                return status
        await asyncio.sleep(0.02)
    raise CoordinatorUnavailable(f"no coordinator replica led within {within:g}s")
