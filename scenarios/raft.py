"""The seed's Raft claims, reproduced on real node processes with a narrated timeline.

`txlab scenario raft-election | raft-split-vote | raft-partition | master-slave-blocking`. Each starts its
own cluster on loopback in a temp dir (ports from --base-port), narrates what happens from every node's
`/raft/events` (role changes, votes cast, uncommitted entries rolled back, merged in time order), and
stops every process it started. The exit code is 0 when the claim was observed, 1 when it was not.

Demo-only settings, all plain node options: a long `--election-tick` so the first moments of a cluster
are slow enough to watch; in the split vote, `--no-pre-vote` plus a partition between the two
candidates held only while they both campaign, so that their vote requests cross for certain (with
randomised timeouts that is rare on its own, which is the point of them); in the partition scenario,
`--no-check-quorum` so the minority leader keeps believing it leads, as in the seed's story (with
CheckQuorum, the default, it steps down by itself within an election timeout).
"""

from __future__ import annotations

import argparse
import os
import signal
import tempfile
import threading
import time
from collections.abc import Callable

import httpx
from rich.console import Console
from rich.table import Table

from raft.cluster import LocalCluster

console = Console()


class Timeline:
    """Collects every node's events (`GET /raft/events`: role changes, votes, rolled-back entries) in a
    background thread and prints them merged in time order; also notices nodes going down."""

    SETTLE = 0.08  # seconds an event waits for slower-polled nodes' earlier events before it is printed

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster
        self.t0 = time.time()
        self.events: list[dict] = []  # everything printed so far
        self._pending: list[dict] = []
        self._since: dict[int, tuple[str, int]] = {}  # node -> (boot id, last seq seen)
        self._up: dict[int, bool] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Timeline:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._flush(everything=True)

    def _run(self) -> None:
        with httpx.Client(timeout=0.3) as client:
            while not self._stop.is_set():
                for i in range(1, self.cluster.nodes + 2):  # one spare id: a node that may join
                    self._poll(client, i)
                self._flush()
                time.sleep(0.01)

    def _poll(self, client: httpx.Client, i: int) -> None:
        boot, seq = self._since.get(i, ("", 0))
        try:
            body = client.get(f"{self.cluster.http_url(i)}/raft/events", params={"since": seq}).json()
        except (httpx.HTTPError, ValueError):
            if self._up.get(i):
                self._pending.append({"t": time.time(), "node": i, "kind": "down"})
            self._up[i] = False
            return
        self._up[i] = True
        if body["boot"] != boot:  # a new process: its sequence numbers start again
            seq = 0
            body["events"] = [e for e in body["events"] if e["seq"] > 0]
        for e in body["events"]:
            seq = max(seq, e["seq"])
            self._pending.append(e)
        self._since[i] = (body["boot"], seq)

    def _flush(self, everything: bool = False) -> None:
        cutoff = time.time() - (0 if everything else self.SETTLE)
        ready = sorted((e for e in self._pending if e["t"] <= cutoff), key=lambda e: e["t"])
        self._pending = [e for e in self._pending if e["t"] > cutoff]
        for e in ready:
            self.events.append(e)
            console.print(f"  [dim]+{e['t'] - self.t0:6.3f}s[/dim]  node {e['node']}  {_describe(e)}")

    def catch_up(self) -> None:
        """Let the events so far reach the screen before the narration goes on."""
        time.sleep(self.SETTLE + 0.05)

    def candidates_in(self, term: int) -> set[int]:
        return {
            e["node"]
            for e in self.events + self._pending
            if e["kind"] == "role" and e["role"] == "candidate" and e["term"] == term
        }


def _describe(e: dict) -> str:
    kind = e["kind"]
    if kind == "down":
        return "[red]down[/red]"
    if kind == "start":
        return f"started (term {e['term']}, {e['recovered']} log entries recovered from disk)"
    if kind == "vote":
        whom = "itself" if e["to"] == e["node"] else f"node {e['to']}"
        return f"votes for {whom} in term {e['term']}"
    if kind == "rollback":
        return (
            f"[magenta]discards its uncommitted entries {e['first']}..{e['last']}[/magenta], replaced "
            f"by the leader's (term {e['term']})"
        )
    role = e["role"]
    colour = {"leader": "green", "candidate": "yellow", "pre-candidate": "yellow"}.get(role, "white")
    lead = f", leader is node {e['leader']}" if e["leader"] and role != "leader" else ""
    return f"[{colour}]{role}[/{colour}] in term {e['term']}{lead}"


def wait_until(cond: Callable[[], bool], timeout: float) -> bool:
    """Poll `cond` every 20 ms until it holds (True) or `timeout` passes (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return False


def status_table(cluster: LocalCluster, title: str, notes: dict[int, str] | None = None) -> None:
    table = Table(title=title)
    for col in ("node", "role", "term", "leader", "last index", "commit", "applied", "note"):
        table.add_column(col, justify="right" if col not in ("role", "note") else "left")
    for i in range(1, cluster.nodes + 1):
        st = cluster.status(i)
        note = (notes or {}).get(i, "")
        if st is None:
            table.add_row(str(i), "[red]down[/red]", "", "", "", "", "", note)
            continue
        role = f"[green]{st['role']}[/green]" if st["role"] == "leader" else st["role"]
        table.add_row(
            str(i),
            role,
            str(st["term"]),
            str(st["leader"] or "-"),
            str(st["last_index"]),
            str(st["commit"]),
            str(st["applied"]),
            note,
        )
    console.print(table)


def _put(cluster: LocalCluster, node: int, key: str, value: object, timeout: float = 3.0) -> str:
    t0 = time.perf_counter()
    try:
        r = httpx.put(f"{cluster.http_url(node)}/kv/{key}", json={"value": value}, timeout=timeout)
    except httpx.TimeoutException:
        return f"no answer within {timeout:g}s (not committed)"
    ms = (time.perf_counter() - t0) * 1000
    return f"HTTP {r.status_code} in {ms:.1f} ms"


def _get(cluster: LocalCluster, node: int, key: str) -> object:
    r = httpx.get(f"{cluster.http_url(node)}/kv/{key}", timeout=3.0, follow_redirects=True)
    return r.json()["value"] if r.status_code == 200 else None


def _parse(argv: list[str], name: str, base_port: int) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=f"txlab scenario {name}")
    p.add_argument("--base-port", type=int, default=base_port)
    p.add_argument("--data-dir", default=None, help="keep node files here (default: a temp dir, removed)")
    return p.parse_args(argv)


def _run(argv: list[str], name: str, base_port: int, body: Callable[[argparse.Namespace, str], bool]) -> int:
    args = _parse(argv, name, base_port)
    with tempfile.TemporaryDirectory(prefix=f"txlab-{name}-") as tmp:
        ok = body(args, args.data_dir or tmp)
    console.print(
        "[bold green]observed as claimed[/bold green]" if ok else "[bold red]NOT observed[/bold red]"
    )
    return 0 if ok else 1


# ------------------------------------------------------------------------------------------------
def election(argv: list[str]) -> int:
    """All nodes start as followers; one times out, becomes candidate, wins a majority; kill it, again."""
    return _run(argv, "raft-election", 7400, _election)


def _election(args: argparse.Namespace, data_dir: str) -> bool:
    cluster = LocalCluster(
        3, data_dir, args.base_port, election_tick=50, log_dir=os.path.join(data_dir, "logs")
    )
    console.rule("[bold]Raft leader election on 3 real processes[/bold]")
    console.print(
        "Election timeouts are random in [500, 1000) ms here (slowed down 3x so it can be watched)."
    )
    try:
        with Timeline(cluster) as tl:
            cluster.start()
            status_table(cluster, "just started: every node is a follower in term 0, no leader")
            leader = cluster.wait_leader(timeout=10)
            tl.catch_up()
            term0 = cluster.status(leader)["term"]
            console.print(
                f"\nNode {leader}'s election timeout expired first: it checked with a pre-vote that it "
                f"could win, voted for itself, won a majority and leads term {term0}."
            )
            console.print(
                f"Write through the leader: PUT /kv/color -> {_put(cluster, leader, 'color', 'blue')}"
            )
            time.sleep(0.2)
            tl.catch_up()
            status_table(cluster, "the entry is committed and applied on every node")
            term1 = cluster.status(leader)["term"]
            console.print(f"\n[bold]kill -9 node {leader}[/bold] (the leader)")
            cluster.kill(leader, signal.SIGKILL)
            new = cluster.wait_leader(timeout=10)
            term2 = cluster.status(new)["term"]
            tl.catch_up()
            console.print(f"\nNode {new} won the new election in term {term2} (was {term1}).")
            console.print(f"The committed write survived: GET /kv/color -> {_get(cluster, new, 'color')!r}")
            console.print(f"\nrestart node {leader}: it comes back as a follower and catches up")
            cluster.start_node(leader)
            wait_until(lambda: (cluster.status(leader) or {}).get("leader") == new, 10)
            time.sleep(0.3)
        status_table(cluster, "final state")
        return term2 > term1 and new != leader and _get(cluster, new, "color") == "blue"
    finally:
        cluster.stop()


# ------------------------------------------------------------------------------------------------
def split_vote(argv: list[str]) -> int:
    """Two candidates in the same term split the vote; a new randomised timeout resolves it."""
    return _run(argv, "raft-split-vote", 7420, _split_vote)


def _split_vote(args: argparse.Namespace, data_dir: str) -> bool:
    console.rule("[bold]Raft split vote on real processes[/bold]")
    console.print(
        "Nodes 1 and 2 run, node 3 is down, so a candidate needs the other node's vote. Both start an "
        "election for term 1 at once and vote for themselves; their vote requests cross, and each refuses "
        "the other because it already voted in term 1. To make the crossing certain rather than lucky, "
        "the partition filter holds the two requests back for a moment (PreVote is off so the candidates "
        "do not wait for pre-votes that cannot arrive). Timeouts are random in [1, 2) s here."
    )
    cluster = LocalCluster(
        3,
        data_dir,
        args.base_port,
        election_tick=100,
        extra_args=["--no-pre-vote"],
        log_dir=os.path.join(data_dir, "logs"),
    )
    try:
        with Timeline(cluster) as tl:
            cluster.start([1, 2])
            _block(cluster, 1, [2])
            for i in (1, 2):
                httpx.post(
                    cluster.http_url(i) + "/raft/campaign", headers=cluster.admin_headers()
                ).raise_for_status()
            wait_until(lambda: tl.candidates_in(1) == {1, 2}, 2)
            _heal(cluster, 1)
            votes = {i: (cluster.status(i) or {}).get("vote") for i in (1, 2)}
            tl.catch_up()
            status_table(
                cluster,
                "split vote in term 1",
                {1: f"voted for {votes[1]}", 2: f"voted for {votes[2]}", 3: "not started"},
            )
            split = tl.candidates_in(1) == {1, 2} and votes == {1: 1, 2: 2} and cluster.leader([1, 2]) is None
            console.print(
                "\nTwo candidates, one vote each, no majority, no leader in term 1. Nobody retries "
                "until a randomised election timeout expires."
            )
            leader = cluster.wait_leader(timeout=10, among=[1, 2])
            term = cluster.status(leader)["term"]
            tl.catch_up()
            console.print(
                f"\nNode {leader}'s timeout expired first: it started term {term}, the other node had not "
                f"voted in that term and granted its vote, so node {leader} leads."
            )
            console.print(f"PUT /kv/x -> {_put(cluster, leader, 'x', 1)}")
            console.print("\nstart node 3: it joins as a follower")
            cluster.start_node(3)
            wait_until(lambda: (cluster.status(3) or {}).get("leader") == leader, 10)
        status_table(cluster, "resolved")
        return split and term > 1
    finally:
        cluster.stop()


# ------------------------------------------------------------------------------------------------
def partition(argv: list[str]) -> int:
    """A partition gives two leaders; the minority one cannot commit and rolls back when healed."""
    return _run(argv, "raft-partition", 7440, _partition)


def _block(cluster: LocalCluster, node: int, others: list[int]) -> None:
    r = httpx.post(
        cluster.http_url(node) + "/raft/partition", json={"block": others}, headers=cluster.admin_headers()
    )
    r.raise_for_status()


def _heal(cluster: LocalCluster, node: int) -> None:
    httpx.delete(cluster.http_url(node) + "/raft/partition", headers=cluster.admin_headers()).raise_for_status()


def _partition(args: argparse.Namespace, data_dir: str) -> bool:
    console.rule("[bold]Network partition with two leaders, on 5 real processes[/bold]")
    console.print(
        "CheckQuorum is off in this scenario so the cut-off leader keeps believing it leads, as in "
        "the seed's story (with it on, the default, that leader steps down within ~300 ms)."
    )
    cluster = LocalCluster(
        5, data_dir, args.base_port, extra_args=["--no-check-quorum"], log_dir=os.path.join(data_dir, "logs")
    )
    try:
        with Timeline(cluster) as tl:
            cluster.start()
            old = cluster.wait_leader()
            tl.catch_up()
            console.print(f"PUT /kv/before -> {_put(cluster, old, 'before', 'everyone sees this')}")
            follower = next(i for i in range(1, 6) if i != old)
            minority = [old, follower]
            majority = [i for i in range(1, 6) if i not in minority]
            console.print(
                f"\n[bold]partition[/bold]: {{{old}, {follower}}} | {{{', '.join(map(str, majority))}}}"
            )
            for i in minority:
                _block(cluster, i, majority)
            new = cluster.wait_leader(timeout=10, among=majority)
            wait_until(lambda: (cluster.status(new) or {}).get("commit", 0) > 0, 2)
            tl.catch_up()
            status_table(cluster, "two leaders, in different terms", {old: "minority", follower: "minority"})
            console.print(
                f"\nwrite to the minority leader {old}: PUT /kv/lost -> "
                f"{_put(cluster, old, 'lost', 'never committed', timeout=2.0)}"
            )
            console.print(
                f"write to the majority leader {new}: PUT /kv/kept -> "
                f"{_put(cluster, new, 'kept', 'committed by 3 of 5')}"
            )
            st_old = cluster.status(old)
            console.print(
                f"node {old} appended the write (last index {st_old['last_index']}) but its commit index "
                f"is stuck at {st_old['commit']}: it cannot reach a majority."
            )
            console.print("\n[bold]heal the partition[/bold]")
            for i in minority:
                _heal(cluster, i)
            wait_until(lambda: (cluster.status(old) or {}).get("leader") == new, 10)
            time.sleep(0.5)
        rolled_back = any(e["kind"] == "rollback" and e["node"] == old for e in tl.events)
        status_table(cluster, "healed: one leader; the minority's uncommitted entries were replaced")
        lost, kept = _get(cluster, new, "lost"), _get(cluster, new, "kept")
        console.print(f"GET /kv/lost -> {lost!r}   GET /kv/kept -> {kept!r}")
        st_old, st_new = cluster.status(old), cluster.status(new)
        return (
            rolled_back
            and lost is None
            and kept == "committed by 3 of 5"
            and st_old["role"] == "follower"
            and st_old["commit"] == st_new["commit"]
        )
    finally:
        cluster.stop()


# ------------------------------------------------------------------------------------------------
def master_slave_blocking(argv: list[str]) -> int:
    """Commit quorum `all` (master-slave sync replication) blocks on one dead follower; `majority` not."""
    return _run(argv, "master-slave-blocking", 7460, _master_slave)


def _master_slave(args: argparse.Namespace, data_dir: str) -> bool:
    console.rule("[bold]Master-slave synchronous replication (quorum=all) vs Raft (quorum=majority)[/bold]")
    rows = []
    blocked_then_resumed = False
    majority_kept_going = False
    for quorum in ("all", "majority"):
        cluster = LocalCluster(
            3,
            os.path.join(data_dir, quorum),
            args.base_port,
            quorum=quorum,
            log_dir=os.path.join(data_dir, "logs"),
        )
        try:
            console.print(f"\n[bold]commit quorum = {quorum}[/bold]")
            cluster.start()
            leader = cluster.wait_leader()
            rows.append((quorum, "all 3 up", _put(cluster, leader, "a", 1)))
            victim = next(i for i in range(1, 4) if i != leader)
            console.print(f"kill -9 follower {victim}")
            cluster.kill(victim, signal.SIGKILL)
            result = _put(cluster, leader, "b", 2, timeout=2.0)
            rows.append((quorum, f"follower {victim} dead", result))
            st = cluster.status(leader)
            console.print(
                f"  PUT /kv/b -> {result}; leader last index {st['last_index']}, commit {st['commit']}"
            )
            if quorum == "all":
                console.print(f"restart follower {victim}: the blocked write can now reach every node")
                cluster.start_node(victim)
                ok = wait_until(lambda c=cluster, ld=leader: _get(c, ld, "b") == 2, 10)
                rows.append(
                    (
                        quorum,
                        f"follower {victim} back",
                        "the blocked write committed" if ok else "still blocked",
                    )
                )
                blocked_then_resumed = "not committed" in result and ok
            else:
                majority_kept_going = result.startswith("HTTP 200")
        finally:
            cluster.stop()
    table = Table(title="one dead follower: who keeps accepting writes?")
    for col in ("commit quorum", "situation", "PUT result"):
        table.add_column(col)
    for r in rows:
        table.add_row(*r)
    console.print(table)
    return blocked_then_resumed and majority_kept_going
