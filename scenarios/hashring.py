"""`txlab scenario hashring`: add and remove a cache node under load and watch what moves.

Runs a cache-aside read load (with a few writes that invalidate) over the three cache Redis nodes,
starts a fourth redis-server on a free loopback port, adds it to the ring live, removes it again,
and prints the share of keys that moved against the ideal 1/(N+1), the load per node and the hit
ratio before and after each change, and finally checks that no stale value is served.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import socket
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import redis.asyncio as aioredis
from redis.exceptions import RedisError
from rich.console import Console
from rich.table import Table

from hashring import Ring
from services.cache.config import parse_nodes
from services.cache.sharded import ShardedCache
from services.common.settings import Settings

console = Console(width=120)  # wide enough for the tables when the output is not a terminal


@dataclass
class Catalogue:
    """The synthetic source of truth: a product's price and version, and how often it was read."""

    versions: dict[str, int]
    loads: int = 0
    delay: float = 0.002

    async def load(self, key: str) -> dict[str, object]:
        self.loads += 1
        await asyncio.sleep(self.delay)  # a database read
        version = self.versions[key]
        return {"sku": key, "price_cents": 1000 + version, "version": version}


@dataclass
class Window:
    name: str
    nodes: int
    reads: dict[str, int]
    hits: int
    misses: int
    loads: int
    seconds: float


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _start_redis(directory: Path) -> tuple[asyncio.subprocess.Process, str]:
    port = _free_port()
    proc = await asyncio.create_subprocess_exec(
        "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
        "--dir", str(directory), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}"
    client = aioredis.Redis.from_url(url)
    try:
        for _ in range(100):
            try:
                await client.ping()
                return proc, url
            except (RedisError, OSError):
                await asyncio.sleep(0.05)
    finally:
        await client.aclose()
    proc.terminate()
    await proc.wait()
    raise RuntimeError(f"redis-server on port {port} did not answer")


def _snapshot(cache: ShardedCache) -> dict[str, tuple[int, int]]:
    return {name: (s.hits, s.misses) for name, s in cache.stats().items()}


async def _window(name: str, cache: ShardedCache, db: Catalogue, seconds: float) -> Window:
    before, loads, start = _snapshot(cache), db.loads, time.perf_counter()
    await asyncio.sleep(seconds)
    after = _snapshot(cache)
    reads = {n: sum(after[n]) - sum(before.get(n, (0, 0))) for n in after}
    hits = sum(after[n][0] - before.get(n, (0, 0))[0] for n in after)
    return Window(name, len(cache.ring.nodes), reads, hits, sum(reads.values()) - hits, db.loads - loads,
                  time.perf_counter() - start)


async def _worker(cache: ShardedCache, db: Catalogue, keys: list[str], rng: random.Random,
                  write_ratio: float, ttl: float, stop: asyncio.Event) -> None:
    while not stop.is_set():
        key = keys[rng.randrange(len(keys))]
        if rng.random() < write_ratio:
            db.versions[key] += 1  # the price changes: write the database, then invalidate
            await cache.invalidate(key)
        else:
            await cache.get_or_load(key, lambda key=key: db.load(key), ttl=ttl)


def _moved_keys(before: Ring, after: Ring, keys: list[str]) -> float:
    return sum(a != b for a, b in zip(before.nodes_for(keys), after.nodes_for(keys), strict=True)) / len(keys)


async def run(args: argparse.Namespace) -> int:
    nodes = parse_nodes(Settings().cache_nodes)
    for name, url in nodes.items():
        client = aioredis.Redis.from_url(url)
        try:
            await client.ping()
        except (RedisError, OSError):
            console.print(f"[red]cache node {name} does not answer; run scripts/local-services[/]")
            return 2
        finally:
            await client.aclose()
    if shutil.which("redis-server") is None:
        console.print("[red]redis-server is not installed; the scenario starts a fourth node with it[/]")
        return 2

    rng = random.Random(args.seed)
    keys = [f"product:{i:05d}" for i in range(args.keys)]
    rng.shuffle(keys)
    db = Catalogue(dict.fromkeys(keys, 1))
    prefix = f"scenario:{uuid.uuid4().hex[:8]}:"
    console.rule("[bold]Consistent hashing under load: a cache node joins, then leaves")
    console.print(f"{len(nodes)} cache nodes: {', '.join(nodes)}. {args.workers} concurrent readers over "
                  f"{args.keys:,} products (uniform), {args.write_ratio:.0%} of requests change a "
                  f"price and invalidate it. Keys live under [cyan]{prefix}[/].")
    windows: list[Window] = []
    changes: list[tuple[str, int, float, float]] = []
    with tempfile.TemporaryDirectory(prefix="txlab-redis-") as tmp:
        proc, url4 = await _start_redis(Path(tmp))
        name4 = f"127.0.0.1:{url4.rsplit(':', 1)[1]}"
        console.print(f"Started a fourth redis-server (pid {proc.pid}) at {url4}; it is not on the ring yet.")
        stop = asyncio.Event()
        try:
            async with ShardedCache(nodes, prefix=prefix, default_ttl=args.ttl,
                                    max_ttl=max(args.ttl * 2, 60)) as cache:
                workers = [asyncio.create_task(_worker(cache, db, keys, random.Random(args.seed + i),
                                                       args.write_ratio, args.ttl, stop))
                           for i in range(args.workers)]
                console.print("\n[bold]1.[/] Warming the cache on three nodes...")
                await _window("cold start, 3 nodes", cache, db, args.window * 3)
                windows.append(await _window("warm, 3 nodes", cache, db, args.window))

                console.print(f"[bold]2.[/] Adding [cyan]{name4}[/] to the ring while the readers run. "
                              "Only the keys on its arcs move, and only to it; the node joins empty.")
                before = cache.ring
                share = await cache.add_node(name4, url4)
                moved = _moved_keys(before, cache.ring, keys)
                changes.append((f"add {name4}", len(before.nodes), share, moved))
                ring_after_join = cache.ring_info()
                windows.append(await _window("just after the join", cache, db, args.window))
                windows.append(await _window("settled, 4 nodes", cache, db, args.window))

                console.print(f"[bold]3.[/] Removing [cyan]{name4}[/] again. Its keys go back to the nodes "
                              "that held them; invalidations made meanwhile were also applied there.")
                before = cache.ring
                share = await cache.remove_node(name4)
                changes.append((f"remove {name4}", len(before.nodes) - 1, share,
                                _moved_keys(before, cache.ring, keys)))
                windows.append(await _window("just after the leave", cache, db, args.window))
                windows.append(await _window("settled, 3 nodes", cache, db, args.window))
                stop.set()
                await asyncio.gather(*workers)

                console.print("[bold]4.[/] Readers stopped. Reading every product once through the cache "
                              "and comparing it with the source of truth...")
                stale = 0
                for key in keys:
                    value = await cache.get_or_load(key, lambda key=key: db.load(key), ttl=args.ttl)
                    stale += value["version"] != db.versions[key]
                await _cleanup(prefix, [*nodes.values()])
        finally:
            stop.set()
            proc.terminate()  # the fourth node is ours: stop it by its pid
            await proc.wait()
        console.print(f"Stopped the fourth redis-server (pid {proc.pid}).\n")

    _print_changes(changes)
    _print_ring(ring_after_join)
    _print_windows(windows, [*nodes, name4])
    verdict = "[green]0 stale values served[/]" if not stale else f"[red]{stale} stale values served[/]"
    console.print(f"After the run: {verdict} out of {len(keys):,} products read back; "
                  f"{sum(db.versions.values()) - len(keys):,} price changes were made during the run.")
    return 0 if not stale else 1


async def _cleanup(prefix: str, urls: list[str]) -> None:
    for url in urls:
        client = aioredis.Redis.from_url(url)
        keys = [k async for k in client.scan_iter(match=prefix + "*", count=1000)]
        for i in range(0, len(keys), 500):
            await client.unlink(*keys[i:i + 500])
        await client.aclose()


def _print_changes(changes: list[tuple[str, int, float, float]]) -> None:
    table = Table(title="Keys moved by each ring change")
    for col in ("change", "ideal 1/(N+1)", "moved (arcs of the circle)", "moved (of the products)",
                "vs ideal"):
        table.add_column(col, justify="right" if col != "change" else "left")
    for label, n, share, counted in changes:
        ideal = 1 / (n + 1)
        table.add_row(label, f"{ideal:.2%}", f"{share:.2%}", f"{counted:.2%}", f"{share / ideal:.2f}x")
    console.print(table)


def _print_ring(info: dict[str, object]) -> None:
    table = Table(title="The ring with the fourth node: virtual points and share of the circle")
    for col in ("node", "url", "points", "share of the circle"):
        table.add_column(col, justify="right" if col in ("points", "share of the circle") else "left")
    for node in info["nodes"]:  # type: ignore[union-attr]
        table.add_row(node["name"], node["url"], str(node["points"]), f"{node['share']:.2%}")
    console.print(table)


def _print_windows(windows: list[Window], names: list[str]) -> None:
    table = Table(title="Reads per node (share of reads) and hit ratio, per window")
    table.add_column("window")
    for name in names:
        table.add_column(name.removeprefix("127.0.0.1"), justify="right")
    for col in ("reads/s", "hit ratio", "loads"):
        table.add_column(col, justify="right")
    for w in windows:
        total = sum(w.reads.values()) or 1
        cells = [f"{w.reads.get(n, 0):,} ({w.reads.get(n, 0) / total:.0%})" if w.reads.get(n) else "-"
                 for n in names]
        table.add_row(w.name, *cells, f"{total / w.seconds:,.0f}", f"{w.hits / total:.1%}", f"{w.loads:,}")
    table.caption = ("Reads are Redis GETs (concurrent callers of one key share one). The join costs misses: "
                     "the new node starts empty. The leave costs few: within the TTL the nodes that owned "
                     "those keys before the join still hold them, kept correct by invalidating there too.")
    console.print(table)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="txlab scenario hashring", description=__doc__)
    parser.add_argument("--keys", type=int, default=5000, help="products in the catalogue")
    parser.add_argument("--workers", type=int, default=16, help="concurrent readers")
    parser.add_argument("--window", type=float, default=1.5, help="seconds per measured window")
    parser.add_argument("--write-ratio", type=float, default=0.02,
                        help="share of requests that change a price")
    parser.add_argument("--ttl", type=float, default=60.0, help="cache TTL in seconds")
    parser.add_argument("--seed", type=int, default=7)
    return asyncio.run(run(parser.parse_args(argv)))
