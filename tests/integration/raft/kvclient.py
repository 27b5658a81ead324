"""A test client for the KV API that follows the leader and records a history for the checker."""

from __future__ import annotations

import asyncio
import time

import httpx

from raft.cluster import LocalCluster
from raft.testing.linearizability import KvOp


class NotSent(Exception):
    """The request certainly had no effect (redirect, no leader, connection refused): safe to retry."""


class HistoryClient:
    def __init__(self, cluster: LocalCluster, client_no: int, http: httpx.AsyncClient,
                 history: list[KvOp]) -> None:
        self.cluster, self.no, self.http, self.history = cluster, client_no, http, history
        self.target = 1

    async def _once(self, method: str, path: str, body: dict | None) -> httpx.Response:
        url = self.cluster.http_url(self.target) + path
        try:
            r = await self.http.request(method, url, json=body)
        except httpx.ConnectError as exc:
            self.target = self.target % self.cluster.nodes + 1
            raise NotSent from exc
        if r.status_code == 307:
            self.target = r.json()["leader"]
            raise NotSent
        if r.status_code == 503 and "leader" in r.json() and r.json().get("outcome") != "unknown":
            self.target = self.target % self.cluster.nodes + 1
            raise NotSent
        return r

    async def call(self, kind: str, key: str, value=None, expected=None, deadline: float = 20.0) -> KvOp:
        """Run one operation until it got a definite answer or an unknown outcome; record it."""
        method, path, body = {
            "put": ("PUT", f"/kv/{key}", {"value": value}),
            "get": ("GET", f"/kv/{key}", None),
            "cas": ("POST", f"/kv/{key}/cas", {"expected": expected, "value": value}),
        }[kind]
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            op = KvOp(self.no, kind, key, time.perf_counter_ns(), value=value, expected=expected)
            try:
                r = await self._once(method, path, body)
            except NotSent:
                await asyncio.sleep(0.02)
                continue
            except httpx.HTTPError:
                self.history.append(op)  # sent, answer lost: it may or may not have taken effect
                return op
            op.ret = time.perf_counter_ns()
            if r.status_code == 503:  # timed out waiting for the commit: outcome unknown
                op.ret = None
            elif kind == "get":
                op.output = r.json()["value"] if r.status_code == 200 else None
            elif kind == "cas":
                op.output = r.status_code == 200
            else:
                assert r.status_code == 200, r.text
            self.history.append(op)
            return op
        raise TimeoutError(f"{kind} {key}: no leader accepted it within {deadline}s")
