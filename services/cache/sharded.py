"""A cache-aside client that shards keys over Redis nodes with the hash ring.

Guarantees:
* `get_or_load` calls the loader at most once at a time per key in this process (single flight):
  concurrent callers of a cold key share one Redis read and one load.
* Every entry has a TTL of at most `max_ttl`.
* `invalidate` deletes the key on its owner and, while a ring change is in progress (for `max_ttl`
  seconds after it, the longest an entry written under the old ring can live), on the owners under
  the rings before the change; a load that was in flight when the key was invalidated is returned to
  its callers but not stored. A node that fails or cools down misses the delete: see below.
* A node (re)joins empty: `add_node` deletes this cache's keys on it before it enters the ring, so a
  node that was removed, missed invalidations while it was out, and comes back cannot serve the
  stale values it still holds. (Chosen over per-node key versioning, which needs every client to
  agree on the version; the price is a SCAN of the joining node.)
* Waiting on a node is bounded: `timeout` to connect and `timeout` for each reply, never retried. A
  node that fails (refuses, errs, or does not answer in time) is a miss, never an error: reads fall
  through to the loader, stores and deletes are given up on that node.
* After a failure the node is skipped for `cooldown` seconds (reads miss, nothing is sent to it); then
  one call tries it while the others keep skipping, and the node is back once that call succeeds. A
  hung node costs one `timeout` per cool-down, not one per call.
* A delete a node missed leaves what it holds for the key: an entry it had, or a store that was on the
  wire when it stopped answering and that it applies when it resumes. Such an entry is stale for at
  most its TTL (at most `max_ttl`) after the node answers again, as after a crash between a commit and
  its invalidation. Sooner in the usual case: this process remembers the keys (up to `MAX_MISSED` per
  node) whose delete missed a node, and its trial call deletes them there before anything else is
  sent to it; another process reading that node sees the stale entry until its TTL, and a late store
  that the node applies after the trial's deletes lives its TTL too.
* The ring is immutable and swapped in one assignment, so a lookup never sees a half-changed ring.

Scope: single flight and the in-flight check are per process. Several processes agree on placement
only when they apply the same ring changes, and a load in one process racing an invalidation from
another is the usual cache-aside window, closed at the latest by the TTL.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import msgpack
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from hashring import Ring, moved_share
from services.cache.config import parse_nodes
from services.common.settings import Settings

log = logging.getLogger(__name__)

Loader = Callable[[], Awaitable[Any]]
T = TypeVar("T")

DEFAULT_TIMEOUT = 0.25  # seconds; a cache node on the same network answers in about a millisecond
DEFAULT_COOLDOWN = 1.0  # seconds a failed node is skipped before one call tries it again
MAX_MISSED = 10_000  # keys per node whose missed delete is remembered and made good on its return


@dataclass
class NodeStats:
    """What one node served: reads that hit, reads that missed, loads stored, errors (timeouts included),
    and calls skipped while it cooled down after an error."""

    hits: int = 0
    misses: int = 0
    stores: int = 0
    errors: int = 0
    skipped: int = 0

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

    `timeout` bounds every call to a node; a node that fails is skipped for `cooldown` seconds (the
    guarantees, staleness after a missed delete included, are in the module docstring).
    Use as an async context manager (or call `start` and `close`)."""

    def __init__(self, nodes: Mapping[str, str], *, prefix: str = "txlab:cache:", default_ttl: float = 60.0,
                 max_ttl: float = 300.0, scheme: str = "ketama", timeout: float = DEFAULT_TIMEOUT,
                 cooldown: float = DEFAULT_COOLDOWN, clock: Callable[[], float] = time.monotonic) -> None:
        if default_ttl > max_ttl:
            raise ValueError("default_ttl cannot exceed max_ttl")
        if timeout <= 0 or cooldown < 0:
            raise ValueError("timeout must be positive and cooldown not negative")
        self.prefix, self.default_ttl, self.max_ttl, self.clock = prefix, default_ttl, max_ttl, clock
        self.timeout, self.cooldown = timeout, cooldown
        self._urls = dict(nodes)
        self._ring = Ring(list(self._urls), scheme=scheme)
        self._clients: dict[str, aioredis.Redis] = {}
        self._past: list[_PastRing] = []
        self._flights: dict[str, _Flight] = {}
        self._stats: dict[str, NodeStats] = {}
        self._down_until: dict[str, float] = {}  # nodes cooling down after a failure
        self._missed: dict[str, set[str]] = {}  # keys whose delete did not reach the node
        self._change_lock = asyncio.Lock()
        self.coalesced = 0  # get_or_load calls that joined a load already in flight

    @classmethod
    def from_env(cls, settings: Settings | None = None, nodes: Mapping[str, str] | None = None,
                 **overrides: Any) -> ShardedCache:
        """A cache configured by `TXLAB_*` (or `settings`), over `nodes` or else those of `TXLAB_CACHE_NODES`."""
        settings = settings or Settings()
        options: dict[str, Any] = {"prefix": settings.cache_prefix, "max_ttl": settings.cache_max_ttl,
                                   "timeout": settings.cache_timeout_seconds,
                                   "cooldown": settings.cache_cooldown_seconds}
        options.update(overrides)
        return cls(parse_nodes(settings.cache_nodes) if nodes is None else nodes, **options)

    # --- lifecycle ---------------------------------------------------------------------------------

    async def __aenter__(self) -> ShardedCache:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Open a connection pool per node (a node that does not answer counts an error and cools down)."""
        for name, url in self._urls.items():
            self._clients[name] = self._connect(url)
            self._stats.setdefault(name, NodeStats())
            await self._call(name, lambda client: client.ping())

    def _connect(self, url: str) -> aioredis.Redis:
        # no retries: each would wait `timeout` again; the cool-down decides when to try the node again
        return aioredis.Redis.from_url(url, socket_timeout=self.timeout, socket_connect_timeout=self.timeout,
                                       retry=Retry(NoBackoff(), 0))

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

    async def _call(self, name: str, op: Callable[[aioredis.Redis], Awaitable[T]]) -> tuple[bool, T | None]:
        """(True, what `op` returned on the node), or (False, None) if it failed or the node cools down.

        The first call after a cool-down is the node's trial (the others keep skipping until it is
        over): it deletes the keys whose delete missed the node before `op` runs."""
        stats = self._stats[name]
        client = self._clients.get(name)
        if client is None:  # removed from the ring since the caller chose it (a change while it awaited)
            return False, None
        until = self._down_until.get(name)
        if until is not None:
            now = self.clock()
            if now < until:
                stats.skipped += 1
                return False, None
            self._down_until[name] = now + self.cooldown  # this call is the trial
        try:
            if until is not None:
                await self._redeliver(name, client)
            result = await op(client)
        except (RedisError, OSError) as exc:
            stats.errors += 1
            if until is None and name not in self._down_until:
                log.warning("cache node %s failed (%s); skipping it for %.1fs", name, exc, self.cooldown)
            self._down_until[name] = self.clock() + self.cooldown
            return False, None
        if until is not None:
            self._down_until.pop(name, None)
            log.info("cache node %s answers again", name)
        return True, result

    async def _redeliver(self, name: str, client: aioredis.Redis) -> None:
        missed = self._missed.get(name)
        while missed:
            batch = list(itertools.islice(missed, 500))
            await client.delete(*(self._key(k) for k in batch))
            missed.difference_update(batch)

    def _remember_missed(self, name: str, key: str) -> None:
        if name not in self._clients:  # off the ring: it joins again empty (add_node purges it)
            return
        missed = self._missed.setdefault(name, set())
        if len(missed) < MAX_MISSED:  # beyond it, the TTL bounds how long the entry stays stale
            missed.add(key)

    async def get(self, key: str) -> tuple[bool, Any]:
        """(found, value) from the key's owner; a failing or cooling node reads as not found."""
        name = self._ring.node_for(key)
        _, raw = await self._call(name, lambda client: client.get(self._key(key)))
        return self._received(name, raw)

    def _received(self, name: str, raw: bytes | None) -> tuple[bool, Any]:
        """(found, value) of a key's reply from node `name` (None: not there, or the node failed), counted."""
        stats = self._stats[name]
        if raw is None:
            stats.misses += 1
            return False, None
        stats.hits += 1
        return True, msgpack.unpackb(raw, raw=False)

    async def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        """The keys found, with their values: one MGET per owner node, the nodes asked at once; a failing or
        cooling node's keys read as not found."""
        by_node: dict[str, list[str]] = {}
        for key in keys:
            by_node.setdefault(self._ring.node_for(key), []).append(key)

        async def read(name: str, owned: list[str]) -> list[tuple[str, bytes | None]]:
            _, raws = await self._call(name, lambda client: client.mget([self._key(k) for k in owned]))
            return list(zip(owned, raws or [None] * len(owned), strict=True))

        found: dict[str, Any] = {}
        for name, pairs in zip(by_node, await asyncio.gather(*(read(n, o) for n, o in by_node.items())),
                               strict=True):
            for key, raw in pairs:
                there, value = self._received(name, raw)
                if there:
                    found[key] = value
        return found

    async def get_or_load_many(self, loads: Mapping[str, Loader], ttl: float | None = None) -> dict[str, Any]:
        """`get_or_load` for several keys, in one MGET per node for the keys no load is in flight for (an order's
        catalogue lookups: a round trip per node instead of one per key). A key not found there is loaded as by
        `get_or_load` (single flight), without reading it again."""
        asked = [k for k in loads if k not in self._flights]
        values = await self.get_many(asked)
        rest, missed = [k for k in loads if k not in values], set(asked)  # rest: missed, or in flight before
        loaded = await asyncio.gather(*(self._get_or_load(k, loads[k], ttl, read=k not in missed) for k in rest))
        values.update(zip(rest, loaded, strict=True))
        return values

    async def set(self, key: str, value: Any, ttl: float | None = None) -> None:
        """Store `value` on the key's owner for `ttl` seconds (capped at max_ttl); given up if it fails."""
        name = self._ring.node_for(key)
        ttl_ms = max(1, int(min(ttl or self.default_ttl, self.max_ttl) * 1000))
        packed = msgpack.packb(value, use_bin_type=True)
        ok, _ = await self._call(name, lambda client: client.set(self._key(key), packed, px=ttl_ms))
        if ok:
            self._stats[name].stores += 1

    async def get_or_load(self, key: str, loader: Loader, ttl: float | None = None) -> Any:
        """The cached value, or the loader's (stored for `ttl`); one load per key at a time."""
        return await self._get_or_load(key, loader, ttl, read=True)

    async def _get_or_load(self, key: str, loader: Loader, ttl: float | None, read: bool) -> Any:
        """`get_or_load`; a flight started here reads the node first only if `read` (False: the caller has just
        read the key and missed)."""
        flight = self._flights.get(key)
        if flight is None:
            flight = _Flight()
            flight.task = asyncio.ensure_future(self._fetch(key, loader, ttl, flight, read))
            self._flights[key] = flight
            flight.task.add_done_callback(lambda _task, key=key, flight=flight: self._land(key, flight))
        else:
            self.coalesced += 1
        # shield: one caller giving up must not cancel the load the others wait for
        return await asyncio.shield(flight.task)

    def _land(self, key: str, flight: _Flight) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]

    async def _fetch(self, key: str, loader: Loader, ttl: float | None, flight: _Flight, read: bool) -> Any:
        if read:
            found, value = await self.get(key)
            if found:
                return value
        value = await loader()
        if not flight.stale:
            await self.set(key, value, ttl)
            if flight.stale:  # invalidated while the SET was on the wire: its DEL may have run first
                await self._delete_everywhere([key])
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
        return await self.invalidate_many((key,))

    async def invalidate_many(self, keys: Iterable[str]) -> int:
        """`invalidate` for several keys, with one DEL per node that owns any of them; returns how many entries
        were deleted."""
        keys = list(keys)
        for key in keys:
            flight = self._flights.pop(key, None)
            if flight is not None:  # its value may predate the change; new callers start a fresh load
                flight.stale = True
        return await self._delete_everywhere(keys)

    async def _delete_everywhere(self, keys: list[str]) -> int:
        by_node: dict[str, list[str]] = {}
        for key in keys:
            for name in self._owners(key):
                by_node.setdefault(name, []).append(key)
        deleted = 0
        for name, owned in by_node.items():
            ok, count = await self._call(name, lambda client, owned=owned: client.delete(*map(self._key, owned)))
            if ok:
                deleted += count or 0
            else:
                for key in owned:
                    self._remember_missed(name, key)
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
            client = self._connect(url)
            try:
                await self._purge(client)
            except (RedisError, OSError):
                await client.aclose()
                raise
            self._clients[name] = client
            self._stats.setdefault(name, NodeStats())
            self._down_until.pop(name, None)  # it joins empty: nothing missed to make good
            self._missed.pop(name, None)
            self._urls[name] = url
            return self._swap(self._ring.with_node(name))

    async def remove_node(self, name: str) -> float:
        """Remove a node live; returns the share of keys that moved (off it)."""
        async with self._change_lock:
            if name not in self._urls:
                raise KeyError(f"cache node {name!r} is not on the ring")
            share = self._swap(self._ring.without_node(name))
            del self._urls[name]
            self._down_until.pop(name, None)
            self._missed.pop(name, None)
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
