"""A seeded simulation of whole Raft node processes: `raft.node.RaftNode` itself, on virtual time.

`raft/testing/sim.py` drives the Raft cores directly; this drives the production node around them: its
Ready loop, its writer and snapshot threads, group commit, the leader's early APPENDs, ReadIndex with its
per-boot contexts, snapshots taken beside the loop, and recovery through `Storage.open`. Everything the
node takes from the outside comes through `raft.node.NodeIO`, and here it is simulated:

- time: an asyncio event loop whose clock jumps to the next timer when nothing is ready, so a run of
  seconds takes milliseconds and never depends on the machine's speed;
- threads: each executor runs its jobs one after another on the loop, each after a random delay, so a
  write may still be running while the loop goes on, as with a real thread;
- the network: messages are lost, delayed, reordered and duplicated, and nodes are partitioned;
- the disk: each node has a `SimDisk`; a crash is a power loss (torn, zero-filled tails), and may strike
  in the middle of a write, at any disk operation.

Clients register sessions and write through `RaftNode.submit` (retrying with the same sequence number
after a timeout or a leader change) and read through `RaftNode.read_barrier`; their history must be
linearizable. Every entry a node applies must match what any other node applied at that index, and a
term has at most one leader. After the faults the network heals and every node restarts; the cluster must
answer a write and converge. Every random choice comes from the seed, so a seed replays the same run.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import random
import selectors
from dataclasses import dataclass, field
from typing import NoReturn

from raft.core import NotLeader
from raft.kv import Op, Outcome, Registered, canonical_json, encode_command, encode_register
from raft.node import CommitUnknown, NodeConfig, NodeIO, RaftNode
from raft.storage import CorruptLog
from raft.testing.linearizability import KvOp, require_linearizable
from raft.testing.sim import SafetyViolation
from raft.testing.simdisk import SimDisk
from raft.types import Entry, Message, Role, Snapshot

DATA_DIR = "/raft"


class _Clock:
    now = 0.0


class _VirtualSelector(selectors.BaseSelector):
    """Polls the real selector (the loop's self-pipe) without waiting; a wait becomes a jump of the clock."""

    def __init__(self, clock: _Clock) -> None:
        self._real = selectors.DefaultSelector()
        self._clock = clock

    def register(self, fileobj, events, data=None):  # type: ignore[no-untyped-def]
        return self._real.register(fileobj, events, data)

    def unregister(self, fileobj):  # type: ignore[no-untyped-def]
        return self._real.unregister(fileobj)

    def get_map(self):  # type: ignore[no-untyped-def]
        return self._real.get_map()

    def close(self) -> None:
        self._real.close()

    def select(self, timeout=None):  # type: ignore[no-untyped-def]
        events = self._real.select(0)
        if not events:
            if timeout is None:
                raise RuntimeError("the simulated processes wait for nothing that can happen")
            self._clock.now += max(0.0, timeout)
        return events


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        self.clock = _Clock()
        super().__init__(_VirtualSelector(self.clock))
        self.set_exception_handler(_quiet_deaths)

    def time(self) -> float:
        return self.clock.now


class NodeDied(BaseException):
    """Raised where a simulated process exits (`NodeIO.fatal`): unwinds its task like the exit would."""


def _quiet_deaths(loop: asyncio.AbstractEventLoop, context: dict) -> None:
    if not isinstance(context.get("exception"), NodeDied):  # a task of a process that exited: expected
        loop.default_exception_handler(context)


class _SimExecutor(concurrent.futures.Executor):
    """A single worker thread, simulated: jobs run in order on the loop, each taking a random time."""

    def __init__(self, loop: asyncio.AbstractEventLoop, rng: random.Random, slow: float) -> None:
        self._loop, self._rng, self._slow = loop, rng, slow
        self._free_at = 0.0
        self._jobs: list[asyncio.TimerHandle] = []
        self.dead = False

    def submit(self, fn, /, *args, **kwargs):  # type: ignore[no-untyped-def]
        fut: concurrent.futures.Future = concurrent.futures.Future()
        at = max(self._loop.time(), self._free_at) + self._rng.uniform(0.0001, self._slow)
        self._free_at = at

        def run() -> None:
            if self.dead or not fut.set_running_or_notify_cancel():
                return
            try:
                fut.set_result(fn(*args, **kwargs))
            except NodeDied:
                return
            except BaseException as exc:
                fut.set_exception(exc)

        self._jobs = [h for h in self._jobs if not h.cancelled()]
        self._jobs.append(self._loop.call_at(at, run))
        return fut

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        pass

    def kill(self) -> None:
        """The process died: jobs not yet run never run."""
        self.dead = True
        for h in self._jobs:
            h.cancel()


class _SimTransport:
    def __init__(self, sim: NodeSim, node_id: int) -> None:
        self.sim, self.node_id = sim, node_id
        self.blocked: frozenset[int] = frozenset()
        self.dropped = 0

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    def send(self, messages: list[Message]) -> None:
        self.sim.send(messages)

    def block(self, nodes: set[int] | frozenset[int]) -> None:
        self.blocked = frozenset(nodes)

    def unblock(self) -> None:
        self.blocked = frozenset()


@dataclass
class _Proc:
    id: int
    disk: SimDisk
    node: RaftNode | None = None
    executors: list[_SimExecutor] = field(default_factory=list)
    retired: str | None = None
    flipped: bool = False


@dataclass
class NodeSimReport:
    seed: int
    ops: int
    completed: int
    crashes: int
    restarts: int
    snapshots: int
    retired: int
    virtual_seconds: float
    notes: list[str] = field(default_factory=list)


class NodeSim:
    def __init__(self, seed: int, n: int = 3) -> None:
        self.seed = seed
        self.rng = random.Random(seed ^ 0x0DE5)
        self.loop = VirtualTimeLoop()
        self.n = n
        self.procs = {i: _Proc(i, SimDisk(random.Random(self.rng.getrandbits(64)))) for i in range(1, n + 1)}
        self.groups: dict[int, int] | None = None
        self.loss = self.rng.choice((0.0, 0.02, 0.1))
        self.duplicate = self.rng.choice((0.0, 0.05))
        self.max_delay = self.rng.choice((0.0005, 0.003, 0.02))
        self.slow_disk = self.rng.choice((0.0005, 0.005))
        self.snapshot_every = self.rng.choice((15, 40, 10**9))
        self.bit_flip = self.rng.choice((0.0, 0.5))
        self.applied: dict[int, tuple[int, bytes]] = {}  # index -> (term, data) applied somewhere
        self.leader_of_term: dict[int, int] = {}
        self.history: list[KvOp] = []
        self.events = 0
        self.notes: list[str] = [f"n={n} loss={self.loss} dup={self.duplicate} delay<={self.max_delay}s "
                                 f"disk<={self.slow_disk}s snapshot_every={self.snapshot_every}"]
        self.crashes = self.restarts = self.snapshots = 0
        self.failure: str | None = None

    # ------------------------------------------------------------------ processes
    def _io(self, p: _Proc) -> NodeIO:
        def executor(name: str) -> _SimExecutor:
            ex = _SimExecutor(self.loop, random.Random(self.rng.getrandbits(64)),
                              self.slow_disk * (10 if "snap" in name else 1))
            p.executors.append(ex)
            return ex

        def fatal() -> NoReturn:
            self.loop.call_soon(self.crash, p.id, "fatal")
            raise NodeDied()

        return NodeIO(disk=p.disk, transport=lambda cfg, receive: _SimTransport(self, cfg.id),
                      executor=executor, rng=random.Random(self.rng.getrandbits(64)), fatal=fatal)

    async def start(self, i: int) -> None:
        p = self.procs[i]
        if p.node is not None or p.retired is not None:
            return
        cfg = NodeConfig(id=i, nodes=self.n, data_dir=DATA_DIR, election_tick=15, heartbeat_tick=5,
                         snapshot_every=self.snapshot_every, request_timeout=0.5)
        p.executors = []
        try:
            node = RaftNode(cfg, io=self._io(p))
        except CorruptLog as exc:
            p.retired = str(exc)
            self.notes.append(f"t={self.loop.time():.3f} node {i} refused to start: {exc}")
            return
        self._watch(node)
        p.node = node
        await node.start()
        self.restarts += self.loop.time() > 0

    def _watch(self, node: RaftNode) -> None:
        """Check every entry and snapshot the node applies against what any node applied before."""
        apply, install = node._apply, node._install_snapshot

        def checked_apply(entries: list[Entry]) -> None:
            for e in entries:
                old = self.applied.setdefault(e.index, (e.term, e.data))
                if old != (e.term, e.data):
                    self.fail(f"State Machine Safety: node {node.cfg.id} applied {(e.index, e.term)}, "
                              f"another node applied term {old[0]} there")
            apply(entries)

        def checked_install(snap: Snapshot) -> None:
            old = self.applied.get(snap.index)
            if old is not None and old[0] != snap.term:
                self.fail(f"State Machine Safety: node {node.cfg.id} installed a snapshot at {snap.index} "
                          f"of term {snap.term}, another node applied term {old[0]} there")
            install(snap)

        node._apply = checked_apply  # type: ignore[method-assign]
        node._install_snapshot = checked_install  # type: ignore[method-assign]

    def crash(self, i: int, why: str = "crash") -> None:
        """Kill node i's process (tasks, threads) and cut its disk's power."""
        p = self.procs[i]
        if p.node is None:
            return
        for ex in p.executors:
            ex.kill()
        node = p.node
        p.node = None
        if node._tick_timer is not None:
            node._tick_timer.cancel()
        for t in [*node._tasks, *([node._snapshot_task] if node._snapshot_task else [])]:
            t.cancel()
        p.disk.crash()
        self.crashes += why != "stop"
        self.notes.append(f"t={self.loop.time():.3f} {why} {i}")

    def fail(self, what: str) -> NoReturn:
        self.failure = self.failure or f"seed={self.seed} t={self.loop.time():.3f}: {what}"
        raise SafetyViolation(self.failure)

    # ------------------------------------------------------------------ network
    def connected(self, a: int, b: int) -> bool:
        return self.groups is None or self.groups.get(a, -1) == self.groups.get(b, -1)

    def send(self, messages: list[Message]) -> None:
        rng = self.rng
        for m in messages:
            if not self.connected(m.frm, m.to) or rng.random() < self.loss:
                continue
            for _ in range(2 if rng.random() < self.duplicate else 1):
                self.loop.call_later(rng.uniform(0.0001, self.max_delay), self._deliver, m)

    def _deliver(self, m: Message) -> None:
        p = self.procs.get(m.to)
        if p is None or p.node is None or not self.connected(m.frm, m.to):
            return
        p.node.receive([m])

    # ------------------------------------------------------------------ checks
    async def _watch_leaders(self) -> None:
        while True:
            await asyncio.sleep(0.005)
            for p in self.procs.values():
                if p.node is not None and p.node.core.role is Role.LEADER:
                    term = p.node.core.term
                    holder = self.leader_of_term.setdefault(term, p.id)
                    if holder != p.id:
                        self.fail(f"Election Safety: nodes {holder} and {p.id} both lead term {term}")
                    self.snapshots = max(self.snapshots, p.node.snapshot_index)

    # ------------------------------------------------------------------ clients
    def _up(self) -> list[RaftNode]:
        return [p.node for p in self.procs.values() if p.node is not None]

    def _pick(self, rng: random.Random) -> RaftNode | None:
        up = self._up()
        leaders = [nd for nd in up if nd.is_leader]
        if leaders and rng.random() < 0.8:
            return max(leaders, key=lambda nd: nd.core.term)
        return rng.choice(up) if up else None

    async def _client(self, c: int, until: float) -> None:
        rng = random.Random(self.rng.getrandbits(64))
        session, seq = 0, 0
        while self.loop.time() < until:
            await asyncio.sleep(rng.uniform(0.0, 0.02))
            node = self._pick(rng)
            if node is None:
                continue
            if not session:
                try:
                    out = await node.submit(encode_register(now=self.loop.time(), session_timeout=5.0))
                except (NotLeader, CommitUnknown):
                    continue
                if isinstance(out, Registered):
                    session, seq = out.session, 0
                continue
            key = rng.choice(("x", "y"))
            if rng.random() < 0.4:
                await self._read(c, node, key)
                continue
            seq += 1
            value = f"v{c}-{seq}"
            if rng.random() < 0.6:
                op = KvOp(c, "put", key, self._tick(), value=value)
                write = (Op.PUT, key, canonical_json(value), None)
            else:
                current = node.machine.get(key)
                expected = None if current is None else json.loads(current)
                op = KvOp(c, "cas", key, self._tick(), value=value, expected=expected)
                write = (Op.CAS, key, canonical_json(value), current or "null")
            self.history.append(op)
            if not await self._write(rng, op, write, session, seq, until + 2.0):
                session = 0  # expired (or given up): the op stays unanswered, a new session follows

    async def _write(self, rng: random.Random, op: KvOp, write: tuple, session: int, seq: int,
                     give_up: float) -> bool:
        """Attempts with one (session, seq) until answered; False if the session expired or time ran out."""
        kind, key, value, expected = write
        while self.loop.time() < give_up:
            node = self._pick(rng)
            if node is None:
                await asyncio.sleep(0.01)
                continue
            command = encode_command(kind, key, value, expected, session, seq, now=self.loop.time(),
                                     session_timeout=5.0)
            try:
                out = await node.submit(command)
            except (NotLeader, CommitUnknown):
                await asyncio.sleep(rng.uniform(0.0, 0.01))
                continue
            if out is Outcome.SESSION_EXPIRED:
                return False
            if out not in (Outcome.OK, Outcome.CONFLICT):
                self.fail(f"client {op.client}'s {op.kind} (session {session}, seq {seq}) got {out!r}")
            op.ret, op.output = self._tick(), out is Outcome.OK
            return True
        return False

    async def _read(self, c: int, node: RaftNode, key: str) -> bool:
        call = self._tick()
        try:
            await node.read_barrier()
        except (NotLeader, CommitUnknown):
            return False
        if self.procs[node.cfg.id].node is not node:
            return False  # it died meanwhile: no answer reached the client
        value = node.machine.get(key)
        self.history.append(KvOp(c, "get", key, call, ret=self._tick(),
                                 output=None if value is None else json.loads(value)))
        return True

    def _tick(self) -> int:
        self.events += 1
        return self.events

    # ------------------------------------------------------------------ faults
    async def _faults(self, until: float) -> None:
        rng = self.rng
        while self.loop.time() < until:
            await asyncio.sleep(0.01)
            x = rng.random()
            ids = list(self.procs)
            up = [i for i in ids if self.procs[i].node is not None]
            down = [i for i in ids if self.procs[i].node is None and self.procs[i].retired is None]
            if x < 0.006 and up:
                self.crash(rng.choice(up))
            elif x < 0.012 and up:
                i = rng.choice(up)  # power lost in the middle of one of its next disk operations
                self.procs[i].disk.crash_after(rng.randint(1, 10))
                self.notes.append(f"t={self.loop.time():.3f} crash {i} at a disk operation")
            elif x < 0.03 and down:
                await self._restart(rng.choice(down))
            elif x < 0.037:
                rng.shuffle(ids)
                k = rng.randint(1, len(ids) - 1)
                self.groups = {i: int(i in ids[:k]) for i in ids}
                self.notes.append(f"t={self.loop.time():.3f} partition {sorted(ids[:k])}")
            elif x < 0.05:
                self.groups = None
                self.notes.append(f"t={self.loop.time():.3f} heal")
            elif x < 0.054:
                leaders = [nd for nd in self._up() if nd.is_leader]
                if leaders:
                    i = leaders[0].cfg.id
                    self.groups = {j: int(j == i) for j in ids}
                    self.notes.append(f"t={self.loop.time():.3f} isolate leader {i}")

    async def _restart(self, i: int) -> None:
        p = self.procs[i]
        if self.bit_flip and not any(q.flipped for q in self.procs.values()) and self.rng.random() < self.bit_flip:
            files = [f for f in p.disk.files() if f.endswith(".log") and p.disk.size_of(f) > 16]
            if files:
                path = self.rng.choice(files[:-1] or files)  # a sealed segment when there is one
                at = self.rng.randrange(8, p.disk.size_of(path) - 8)
                p.disk.flip_bit(path, at, self.rng.randrange(8))
                p.flipped = True
                self.notes.append(f"t={self.loop.time():.3f} flip node {i}: {path} byte {at}")
        self.notes.append(f"t={self.loop.time():.3f} restart {i}")
        await self.start(i)

    # ------------------------------------------------------------------ the run
    async def run(self, seconds: float, heal_seconds: float) -> NodeSimReport:
        for i in self.procs:
            await self.start(i)
        watcher = self.loop.create_task(self._watch_leaders())
        end = self.loop.time() + seconds
        clients = [self.loop.create_task(self._client(c, end)) for c in range(3)]
        try:
            await self._faults(end)
            await asyncio.gather(*clients)
            self.groups = None
            for p in self.procs.values():
                p.disk.crash_after(None)
                if p.node is None:
                    await self._restart(p.id)
            await self._converge(heal_seconds)
        finally:
            watcher.cancel()
            for c in clients:
                c.cancel()
            for p in self.procs.values():
                if p.node is not None:
                    self.crash(p.id, "stop")
            await asyncio.sleep(0)
        require_linearizable(self.history, f"seed={self.seed}")
        return NodeSimReport(self.seed, len(self.history), sum(o.ret is not None for o in self.history),
                             self.crashes, self.restarts, self.snapshots,
                             sum(p.retired is not None for p in self.procs.values()), self.loop.time(), self.notes)

    async def _converge(self, seconds: float) -> None:
        """A write must commit, and then every live node apply everything, within `seconds`."""
        give_up = self.loop.time() + seconds
        rng = random.Random(self.seed)
        op = KvOp(99, "put", "x", self._tick(), value="final")
        self.history.append(op)
        if not await self._write(rng, op, (Op.PUT, "x", canonical_json("final"), None), 0, 0, give_up):
            raise AssertionError(f"seed={self.seed}: no write committed after healing")
        while self.loop.time() < give_up:
            nodes = self._up()
            leaders = [nd for nd in nodes if nd.is_leader]
            if leaders and all(nd.applied == leaders[0].core.commit for nd in nodes):
                for key in ("x", "y"):
                    await self._read(99, leaders[0], key)
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"seed={self.seed}: the nodes did not converge after healing: "
                             f"{[nd.core.status() for nd in self._up()]}")


def run_node_seed(seed: int, seconds: float = 3.0, heal_seconds: float = 10.0) -> NodeSimReport:
    """One seeded run of three node processes; raises SafetyViolation or AssertionError naming the seed
    and the faults when a property fails."""
    sim = NodeSim(seed)
    quiet = logging.getLogger("raft.node")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)  # the runs crash nodes on purpose: their dying words are noise here
    try:
        return sim.loop.run_until_complete(sim.run(seconds, heal_seconds))
    except (SafetyViolation, AssertionError) as exc:
        raise type(exc)(f"{sim.failure or exc}\nfaults: {'; '.join(sim.notes)}") from None
    finally:
        quiet.setLevel(level)
        sim.loop.close()


__all__ = ["NodeDied", "NodeSim", "NodeSimReport", "VirtualTimeLoop", "run_node_seed"]
