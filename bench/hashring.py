"""`txlab bench hashring`: the hash ring against uhashring (ketama mode) on the same keys, in one run.

Prints lookups per second (single and batched), load balance at 40/160/1000 points per node (and
with bounded loads), keys moved when an 11th node joins (averaged over many sets of node names),
the time to add a node to a 500-node ring, and errors seen while lookups race with ring changes.
`--json FILE` writes each table's rows; `--plot FILE.png` draws them.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table
from uhashring import HashRing

from bench.plot import Panel, figure, save
from hashring import BoundedLoads, Ring, moved_share
from hashring.ring import ACCELERATED
from hashring.schemes import md5

if TYPE_CHECKING:
    from matplotlib.figure import Figure

Rows = dict[str, list[dict[str, Any]]]  # each table's rows, by table: what --json writes and --plot draws

LOOKUP_PATH = "C extension hashring._ketama" if ACCELERATED else "pure Python (hashring._ketama not built)"

console = Console(width=120)  # wide enough for the tables when the output is not a terminal


def _keys(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [f"{rng.choice(('user', 'sku', 'order', 'cart'))}:{rng.getrandbits(48):x}" for _ in range(n)]


def _best(fn: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _uhash(names: list[str], points: int = 160) -> HashRing:
    return HashRing({n: {"vnodes": points // 4} for n in names}, hash_fn="ketama")


def _mark(ok: bool) -> str:
    return "[green]met[/]" if ok else "[red]missed[/]"


def lookups(keys: list[str], repeat: int, targets: list[tuple[str, str, bool]], rows: Rows) -> Table:
    names = [f"node-{i}" for i in range(10)]
    ours, theirs = Ring(names), _uhash(names)
    agree = sum(a == b for a, b in zip(ours.nodes_for(keys), (theirs.get_node(k) for k in keys), strict=True))
    t_uh = _best(lambda: [theirs.get_node(k) for k in keys], repeat)
    t_single = _best(lambda: [ours.node_for(k) for k in keys], repeat)
    t_batch = _best(lambda: ours.nodes_for(keys), repeat)
    t_md5 = _best(lambda: [md5(k.encode()).digest() for k in keys], repeat)
    n = len(keys)
    table = Table(title=f"Lookups, 10 nodes x 160 points, {n:,} keys (best of {repeat}); Ring path: {LOOKUP_PATH}")
    for col in ("router", "lookups/s", "vs uhashring"):
        table.add_column(col, justify="right" if col != "router" else "left")
    rows["lookups"] = [{"router": name, "lookups_per_s": n / t} for name, t in (
        ("uhashring", t_uh), ("Ring.node_for", t_single), ("Ring.nodes_for (batched)", t_batch),
        ("md5 of each key only", t_md5))]
    table.add_row("uhashring get_node (baseline)", f"{n / t_uh:,.0f}", "1.00x")
    table.add_row("Ring.node_for", f"{n / t_single:,.0f}", f"{t_uh / t_single:.2f}x")
    table.add_row("Ring.nodes_for (batched)", f"{n / t_batch:,.0f}", f"{t_uh / t_batch:.2f}x")
    table.add_row("[dim]md5 of each key, nothing else[/]", f"[dim]{n / t_md5:,.0f}[/]",
                  f"[dim]{t_uh / t_md5:.2f}x[/]")
    table.caption = (f"Ring and uhashring agree on the owner of {agree / n:.2%} of keys. The md5 row is the "
                     "ceiling for a pure-Python ring that hashes keys as ketama does, one hashlib call per key.")
    targets.append(("single lookups >= 2x uhashring", f"{t_uh / t_single:.2f}x", t_uh / t_single >= 2))
    targets.append(("batched lookups >= 10x uhashring", f"{t_uh / t_batch:.2f}x", t_uh / t_batch >= 10))
    return table


def _balance(loads: list[int]) -> tuple[float, float]:
    mean = statistics.mean(loads)
    return statistics.pstdev(loads) / mean, max(loads) / mean


def balance(keys: list[str], eps: float, sets: int, seed: int, targets: list[tuple[str, str, bool]],
            rows: Rows) -> Table:
    names = [f"node-{i}" for i in range(10)]
    rng = random.Random(seed)
    name_sets = [[f"cache-{rng.getrandbits(32):08x}" for _ in range(10)] for _ in range(sets)]
    table = Table(title=f"Load per node, 10 nodes, {len(keys):,} keys: stddev / mean and max / mean")
    routers = ("uhashring", "Ring", f"Ring, mean of {sets} name sets", f"bounded eps={eps:g}", "bounded eps=0.05")
    rows["balance"] = []
    for col in ("points/node", *routers):
        table.add_column(col, justify="right")
    for points in (40, 160, 1000):
        ring = Ring(names, points=points)
        ours = list(Counter(ring.nodes_for(keys)).values())
        uh = _uhash(names, points)
        theirs = list(Counter(uh.get_node(k) for k in keys).values())
        spread = [_balance(list(Ring(ns, points=points).shares().values())) for ns in name_sets]
        mean_spread = (statistics.mean(s for s, _ in spread), statistics.mean(m for _, m in spread))
        spreads = [_balance(theirs), _balance(ours), mean_spread]
        for e in (eps, 0.05):
            bounded = BoundedLoads(ring, e)
            bounded.nodes_for(keys)
            s_b, m_b = _balance(list(bounded.loads().values()))
            spreads.append((s_b, m_b))
            if points == 160 and e == eps:
                targets.append((f"max/mean <= {1 + eps:g} with bounded loads (160 points)", f"{m_b:.3f}",
                                m_b <= 1 + eps))
        if points == 160:
            s_o = _balance(ours)[0]
            targets.append(("load stddev <= 7.5% at 160 points (node-0..node-9)", f"{s_o:.2%}", s_o <= 0.075))
            targets.append((f"load stddev <= 7.5% at 160 points (mean of {sets} name sets, by arc)",
                            f"{mean_spread[0]:.2%}", mean_spread[0] <= 0.075))
        table.add_row(str(points), *(f"{sd:.2%}  {mx:.3f}" for sd, mx in spreads))
        rows["balance"] += [{"points": points, "router": router, "stddev_pct": sd * 100, "max_over_mean": mx}
                            for router, (sd, mx) in zip(routers, spreads, strict=True)]
    table.caption = ("Ring places the same points as uhashring's ketama mode, so their spread is the same; "
                     "the name-set column is the exact share of the circle, averaged.")
    return table


def joins(keys: list[str], sets: int, seed: int, targets: list[tuple[str, str, bool]], rows: Rows) -> Table:
    rng = random.Random(seed)
    ideal = 1 / 11
    ours, theirs, exact, strays_ours, strays_theirs = [], [], [], 0, 0
    for _ in range(sets):
        names = [f"cache-{rng.getrandbits(32):08x}" for _ in range(11)]
        old = Ring(names[:10])
        new = old.with_node(names[10])
        before, after = old.nodes_for(keys), new.nodes_for(keys)
        moved = [(a, b) for a, b in zip(before, after, strict=True) if a != b]
        strays_ours += sum(b != names[10] for _, b in moved)
        ours.append(len(moved) / len(keys))
        exact.append(moved_share(old, new))
        uh = _uhash(names[:10])
        u_before = [uh.get_node(k) for k in keys]
        uh.add_node(names[10])
        u_moved = [(a, b) for a, b in zip(u_before, (uh.get_node(k) for k in keys), strict=True) if a != b]
        strays_theirs += sum(b != names[10] for _, b in u_moved)
        theirs.append(len(u_moved) / len(keys))
    table = Table(title=f"An 11th node joins: share of {len(keys):,} keys moved, mean of {sets} name sets")
    for col in ("router", "keys moved", "vs ideal 9.09%", "min .. max", "moved to an old node"):
        table.add_column(col, justify="right" if col != "router" else "left")
    rows["join"] = []
    for label, shares, strays in (("uhashring", theirs, str(strays_theirs)), ("Ring", ours, str(strays_ours)),
                                  ("Ring, by arcs (moved_share)", exact, "")):
        mean = statistics.mean(shares)
        rows["join"].append({"router": label.removesuffix(" (moved_share)"), "moved_pct": mean * 100,
                             "min_pct": min(shares) * 100, "max_pct": max(shares) * 100,
                             "moved_to_old_node": int(strays) if strays else None})
        table.add_row(label, f"{mean:.2%}", f"{mean / ideal:.3f}", f"{min(shares):.2%} .. {max(shares):.2%}",
                      strays)
    mean = statistics.mean(ours)
    targets.append(("keys moved on join <= 1.02/(N+1), all to the new node",
                    f"{mean / ideal:.3f} x ideal, {strays_ours} elsewhere",
                    mean / ideal <= 1.02 and not strays_ours))
    return table


def add_node_time(nodes: int, repeat: int, rows: Rows) -> Table:
    names = [f"node-{i}" for i in range(nodes)]
    t_build = _best(lambda: Ring(names), repeat)
    ring = Ring(names)
    t_ours = _best(lambda: ring.with_node("newcomer"), repeat)
    t_build_uh = _best(lambda: _uhash(names), 1)
    uh = _uhash(names)
    t_uh = _best(lambda: uh.add_node("newcomer"), 1)
    table = Table(title=f"Ring changes at {nodes} nodes x 160 points")
    for col in ("operation", "uhashring", "Ring", "ratio"):
        table.add_column(col, justify="right" if col != "operation" else "left")
    rows["changes"] = [{"operation": op, "router": router, "ms": t * 1e3} for op, pair in (
        ("build the ring", (t_build_uh, t_build)), ("add one node", (t_uh, t_ours)))
        for router, t in zip(("uhashring", "Ring"), pair, strict=True)]
    table.add_row("build the ring", f"{t_build_uh * 1e3:,.1f} ms", f"{t_build * 1e3:,.1f} ms",
                  f"{t_build_uh / t_build:,.1f}x")
    table.add_row("add one node", f"{t_uh * 1e3:,.1f} ms", f"{t_ours * 1e3:,.1f} ms",
                  f"{t_uh / t_ours:,.1f}x")
    return table


def _race(lookup: Callable[[str], str], change: Callable[[int], None], valid: Callable[[str], bool],
          keys: list[str], seconds: float, readers: int) -> tuple[int, int, int]:
    stop = threading.Event()
    errors, done, changes = [0], [0], [0]
    lock = threading.Lock()

    def read() -> None:
        n = bad = 0
        while not stop.is_set():
            for k in keys[:2000]:
                try:
                    if not valid(lookup(k)):
                        bad += 1
                except Exception:
                    bad += 1
                n += 1
        with lock:
            errors[0] += bad
            done[0] += n

    def write() -> None:
        i = 0
        while not stop.is_set():
            change(i)
            i += 1
        changes[0] = i

    threads = [threading.Thread(target=read) for _ in range(readers)] + [threading.Thread(target=write)]
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    return done[0], changes[0], errors[0]


def concurrency(keys: list[str], seconds: float, readers: int, targets: list[tuple[str, str, bool]],
                rows: Rows) -> Table:
    names = [f"node-{i}" for i in range(10)]
    everyone = {*names, "extra"}

    class Holder:
        ring = Ring(names)

    def swap(i: int) -> None:  # readers see either ring, never a half-built one
        Holder.ring = Holder.ring.with_node("extra") if i % 2 == 0 else Holder.ring.without_node("extra")

    ours = _race(lambda k: Holder.ring.node_for(k), swap, everyone.__contains__, keys, seconds, readers)
    uh = _uhash(names)

    def mutate(i: int) -> None:
        if i % 2 == 0:
            uh.add_node("extra")
        else:
            uh.remove_node("extra")

    theirs = _race(uh.get_node, mutate, everyone.__contains__, keys, seconds, readers)
    table = Table(title=f"{readers} reader threads racing a thread that adds/removes a node, {seconds:g} s")
    for col in ("router", "lookups", "ring changes", "errors"):
        table.add_column(col, justify="right" if col != "router" else "left")
    rows["race"] = [{"router": router, "lookups": r[0], "ring_changes": r[1], "errors": r[2]}
                    for router, r in (("uhashring", theirs), ("Ring", ours))]
    table.add_row("uhashring (changed in place)", f"{theirs[0]:,}", f"{theirs[1]:,}", f"{theirs[2]:,}")
    table.add_row("Ring (immutable, swapped)", f"{ours[0]:,}", f"{ours[1]:,}", f"{ours[2]:,}")
    table.caption = "an error is an exception or a node that is on neither ring"
    targets.append(("zero errors when lookups race ring changes", str(ours[2]), ours[2] == 0))
    return table


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="txlab bench hashring", description=__doc__)
    parser.add_argument("--keys", type=int, default=200_000, help="keys for lookups and balance")
    parser.add_argument("--move-keys", type=int, default=50_000, help="keys per name set in the join test")
    parser.add_argument("--sets", type=int, default=30, help="sets of node names in the join test")
    parser.add_argument("--repeat", type=int, default=3, help="timed repetitions (the best counts)")
    parser.add_argument("--eps", type=float, default=0.25, help="bounded-loads slack")
    parser.add_argument("--nodes", type=int, default=500, help="ring size for the add-node timing")
    parser.add_argument("--race-seconds", type=float, default=2.0)
    parser.add_argument("--readers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None, help="also write each table's rows to this file, as JSON")
    parser.add_argument("--plot", type=Path, default=None, help="also draw the tables to this PNG")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    keys = _keys(args.keys, args.seed)
    targets: list[tuple[str, str, bool]] = []
    rows: Rows = {}
    console.print(lookups(keys, args.repeat, targets, rows))
    console.print(balance(keys, args.eps, args.sets, args.seed, targets, rows))
    console.print(joins(keys[: args.move_keys], args.sets, args.seed, targets, rows))
    console.print(add_node_time(args.nodes, args.repeat, rows))
    console.print(concurrency(keys, args.race_seconds, args.readers, targets, rows))
    summary = Table(title=f"Targets (issue #4); Ring lookups measured on the {LOOKUP_PATH} path")
    for col in ("target", "measured", ""):
        summary.add_column(col)
    for name, value, ok in targets:
        summary.add_row(name, value, _mark(ok))
    console.print(summary)
    console.print(f"[dim]bench ran in {time.perf_counter() - start:.1f} s[/]")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
        console.print(f"rows written to {args.json}")
    if args.plot:
        save(chart(rows), args.plot)
        console.print(f"chart written to {args.plot}")
    return 0


def chart(rows: Rows) -> Figure:
    """Lookups/s, load spread, keys moved on a join, ring-change time and race errors, Ring beside uhashring."""
    join = rows["join"]
    return figure(f"hash ring vs uhashring (ketama); Ring lookups on the {LOOKUP_PATH} path", [
        Panel(rows["lookups"], "router", {"lookups_per_s": "lookups/s"}, "lookups/s (log)", log=True,
              title="lookups, 10 nodes x 160 points"),
        Panel(rows["balance"], "points", {"stddev_pct": "stddev / mean"}, "load stddev / mean (%)",
              x_label="points per node", series="router", title="load per node, 10 nodes"),
        Panel(join, "router", {"moved_pct": "keys moved"}, "keys moved (%)", title="an 11th node joins",
              reference=(100 / 11, "ideal 1/11")),
        Panel(rows["changes"], "operation", {"ms": "ms"}, "time (ms, log)", series="router", log=True,
              title="ring changes"),
        Panel(rows["race"], "router", {"errors": "errors"}, "errors",
              title="lookups racing ring changes (uhashring changed in place, Ring swapped)")])
