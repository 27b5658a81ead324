"""A cache-aside client that shards keys over Redis nodes with the hash ring.

Guarantees:
* `get_or_load` calls the loader at most once at a time per key in this process (single flight):
  concurrent callers of a cold key share one Redis read and one load.
* Every entry has a TTL of at most `max_ttl`.
* `invalidate` deletes the key on its owner and, while a ring change is in progress (for `max_ttl`
  seconds after it, the longest an entry written under the old ring can live), on the owners under
  the rings before the change; a load that was in flight when the key was invalidated is returned to
  its callers but not stored.
* A node (re)joins empty: `add_node` deletes this cache's keys on it before it enters the ring, so a
  node that was removed, missed invalidations while it was out, and comes back cannot serve the
  stale values it still holds. (Chosen over per-node key versioning, which needs every client to
  agree on the version; the price is a SCAN of the joining node.)
* A node that fails is a miss, never an error: reads fall through to the loader.
* The ring is immutable and swapped in one assignment, so a lookup never sees a half-changed ring.

Scope: single flight and the in-flight check are per process. Several processes agree on placement
only when they apply the same ring changes, and a load in one process racing an invalidation from
another is the usual cache-aside window, closed at the latest by the TTL.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import msgpack
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from hashring import Ring, moved_share
from services.cache.config import parse_nodes
from services.common.settings import Settings

log = logging.getLogger(__name__)

Loader = Callable[[], Awaitable[Any]]


@dataclass
class NodeStats:
    """What one node served: reads that hit, reads that missed, loads stored, errors."""

    hits: int = 0
    misses: int = 0
    stores: int = 0
    errors: int = 0

    @property
    def hit_ratio(self) -> float:
        reads = self.hits + self.misses
        return self.hits / reads if reads else 0.0


@dataclass
class _Flight:
    """One load in progress; `stale` once the key was invalidated while it ran."""

    task: asyncio.Future[Any] | None = None
    stale: bool = False


@dataclass
class _PastRing:
    ring: Ring
    until: float


class ShardedCache:
    """Cache-aside over Redis nodes (ring name -> redis URL) sharded by a `hashring.Ring`.

    Use as an async context manager (or call `start` and `close`)."""

    def __init__(self, nodes: Mapping[str, str], *, prefix: str = "txlab:cache:", default_ttl: float = 60.0,
                 max_ttl: float = 300.0, scheme: str = "ketama",
                 clock: Callable[[], float] = time.monotonic) -> None:
        if default_ttl > max_ttl:
            raise ValueError("default_ttl cannot exceed max_ttl")
        self.prefix, self.default_ttl, self.max_ttl, self.clock = prefix, default_ttl, max_ttl, clock
        self._urls = dict(nodes)
        self._ring = Ring(list(self._urls), scheme=scheme)
        self._clients: dict[str, aioredis.Redis] = {}
        self._past: list[_PastRing] = []
        self._flights: dict[str, _Flight] = {}
        self._stats: dict[str, NodeStats] = {}
        self._change_lock = asyncio.Lock()
        self.coalesced = 0  # get_or_load calls that joined a load already in flight

    @classmethod
    def from_env(cls, settings: Settings | None = None, **overrides: Any) -> ShardedCache:
        """A cache over the nodes of `TXLAB_CACHE_NODES` (or of `settings`)."""
        settings = settings or Settings()
        options: dict[str, Any] = {"prefix": settings.cache_prefix, "max_ttl": settings.cache_max_ttl}
        options.update(overrides)
        return cls(parse_nodes(settings.cache_nodes), **options)

    # --- lifecycle ---------------------------------------------------------------------------------

    async def __aenter__(self) -> ShardedCache:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Open a connection pool per node (nodes that do not answer count errors, not failures)."""
        for name, url in self._urls.items():
            self._clients[name] = aioredis.Redis.from_url(url)
            self._stats.setdefault(name, NodeStats())
            try:
                await self._clients[name].ping()
            except (RedisError, OSError) as exc:
                self._stats[name].errors += 1
                log.warning("cache node %s does not answer: %s", name, exc)

    async def close(self) -> None:
        """Wait for in-flight loads, then close every connection pool."""
        pending = [f.task for f in self._flights.values() if f.task is not None]
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        clients, self._clients = self._clients, {}
        for client in clients.values():
            await client.aclose()

    # --- reads and invalidation --------------------------------------------------------------------

    def _key(self, key: str) -> str:
        return self.prefix + key

    def _client(self, key: str) -> tuple[str, aioredis.Redis]:
        name = self._ring.node_for(key)
        return name, self._clients[name]

    async def get(self, key: str) -> tuple[bool, Any]:
        """(found, value) from the key's owner; a failing node reads as not found."""
        name, client = self._client(key)
        stats = self._stats[name]
        try:
            raw = await client.get(self._key(key))
        except (RedisError, OSError):
            stats.errors += 1
            stats.misses += 1
            return False, None
        if raw is None:
            stats.misses += 1
            return False, None
        stats.hits += 1
        return True, msgpack.unpackb(raw, raw=False)

    async def set(self, key: str, value: Any, ttl: float | None = None) -> None:
        """Store `value` on the key's owner for `ttl` seconds (capped at max_ttl)."""
        name, client = self._client(key)
        ttl_ms = max(1, int(min(ttl or self.default_ttl, self.max_ttl) * 1000))
        try:
            await client.set(self._key(key), msgpack.packb(value, use_bin_type=True), px=ttl_ms)
            self._stats[name].stores += 1
        except (RedisError, OSError):
            self._stats[name].errors += 1

    async def get_or_load(self, key: str, loader: Loader, ttl: float | None = None) -> Any:
        """The cached value, or the loader's (stored for `ttl`); one load per key at a time."""
        flight = self._flights.get(key)
        if flight is None:
            flight = _Flight()
            flight.task = asyncio.ensure_future(self._fetch(key, loader, ttl, flight))
            self._flights[key] = flight
            flight.task.add_done_callback(lambda _task, key=key, flight=flight: self._land(key, flight))
        else:
            self.coalesced += 1
        # shield: one caller giving up must not cancel the load the others wait for
        return await asyncio.shield(flight.task)

    def _land(self, key: str, flight: _Flight) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]

    async def _fetch(self, key: str, loader: Loader, ttl: float | None, flight: _Flight) -> Any:
        found, value = await self.get(key)
        if found:
            return value
        value = await loader()
        if not flight.stale:
            await self.set(key, value, ttl)
            if flight.stale:  # invalidated while the SET was on the wire: its DEL may have run first
                await self._delete_everywhere(key)
        return value

    def _owners(self, key: str) -> set[str]:
        now = self.clock()
        self._past = [p for p in self._past if p.until > now]
        owners = {self._ring.node_for(key)}
        owners.update(p.ring.node_for(key) for p in self._past if len(p.ring))
        return {name for name in owners if name in self._clients}

    def changing(self) -> bool:
        """Whether a ring change is still in progress (entries from an older ring may be live)."""
        now = self.clock()
        return any(p.until > now for p in self._past)

    async def invalidate(self, key: str) -> int:
        """Delete the key on its owner and on its owners before a change still in progress.

        Returns how many nodes it was deleted on. A load in flight for the key is not stored."""
        flight = self._flights.pop(key, None)
        if flight is not None:  # its value may predate the change; new callers start a fresh load
            flight.stale = True
        return await self._delete_everywhere(key)

    async def _delete_everywhere(self, key: str) -> int:
        deleted = 0
        for name in self._owners(key):
            try:
                deleted += await self._clients[name].delete(self._key(key))
            except (RedisError, OSError):
                self._stats[name].errors += 1
        return deleted

    # --- ring changes ------------------------------------------------------------------------------

    def _swap(self, new_ring: Ring) -> float:
        old = self._ring
        self._ring = new_ring
        self._past.append(_PastRing(old, self.clock() + self.max_ttl))
        return moved_share(old, new_ring)

    async def add_node(self, name: str, url: str) -> float:
        """Add a node live; returns the share of keys that moved (to it). The node joins empty."""
        async with self._change_lock:
            if name in self._urls:
                raise ValueError(f"cache node {name!r} is already on the ring")
            client = aioredis.Redis.from_url(url)
            try:
                await self._purge(client)
            except (RedisError, OSError):
                await client.aclose()
                raise
            self._clients[name] = client
            self._stats.setdefault(name, NodeStats())
            self._urls[name] = url
            return self._swap(self._ring.with_node(name))

    async def remove_node(self, name: str) -> float:
        """Remove a node live; returns the share of keys that moved (off it)."""
        async with self._change_lock:
            if name not in self._urls:
                raise KeyError(f"cache node {name!r} is not on the ring")
            share = self._swap(self._ring.without_node(name))
            del self._urls[name]
            client = self._clients.pop(name)
            await client.aclose()
            return share

    async def _purge(self, client: aioredis.Redis) -> int:
        removed = 0
        async for batch in _batches(client.scan_iter(match=self.prefix + "*", count=1000), 500):
            removed += await client.unlink(*batch)
        return removed

    # --- description -------------------------------------------------------------------------------

    @property
    def ring(self) -> Ring:
        return self._ring

    @property
    def nodes(self) -> dict[str, str]:
        """Ring name to URL of the nodes on the ring now."""
        return dict(self._urls)

    def ring_info(self) -> dict[str, Any]:
        """Nodes with URL, points and share of the circle, for `GET /cache/ring`."""
        points, shares = self._ring.point_counts(), self._ring.shares()
        return {
            "scheme": self._ring.scheme,
            "changing": self.changing(),
            "nodes": [{"name": n, "url": self._urls[n], "points": points[n], "share": shares.get(n, 0.0)}
                      for n in self._ring.nodes],
        }

    def stats(self) -> dict[str, NodeStats]:
        """Per-node counters (nodes removed since keep theirs)."""
        return dict(self._stats)


async def _batches(items: Any, size: int) -> Any:
    batch: list[Any] = []
    async for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
