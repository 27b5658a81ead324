"""A Raft node process: the event loop that drives the deterministic core with a clock, a disk and a network.

Per Ready, in order (the contract of `raft.types.Ready`): persist the hard state, snapshot and entries
(one fsync for the whole batch, in a dedicated writer thread so the loop keeps accepting proposals,
which then form the next batch: group commit), then send the messages, then apply the snapshot and
the committed entries to the state machine, answer the reads whose index is applied, and advance.
One exception, for the leader only: see `_LEADER_EARLY` below.

Snapshots (log compaction) are taken beside that loop, not in it: the state at the applied index is
captured on the loop (an O(n) copy of references, no encoding), serialised in a snapshot thread while
entries go on being applied, then handed to the core, and its file written and fsynced by that same
snapshot thread while the writer thread goes on appending and fsyncing the log; the writer thread only
records the durable snapshot and drops the segments it covers. So however large the state machine, the
loop goes on sending heartbeats and committing writes, and each snapshot is exactly the state at its
index.

Guarantees given to clients: `submit` resolves only once its entry is committed and applied here (and
reports the state machine's outcome); `read_barrier` resolves only once this leader confirmed its
leadership with a quorum after the read arrived and applied everything committed before it (ReadIndex),
so a read served after it is linearizable.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import heapq
import itertools
import logging
import os
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn, Protocol

from raft.core import Config, NotLeader, Raft
from raft.disk import OS_DISK, Disk
from raft.kv import KVStateMachine
from raft.storage import Storage
from raft.transport import Transport
from raft.types import NONE, ConfChange, Entry, EntryType, Message, MsgType, Ready, Role, Snapshot

log = logging.getLogger("raft.node")

TICK_SECONDS = 0.01
# A leader's own replication messages, sent while it writes the same entries (Raft thesis §10.2.1).
_LEADER_EARLY = frozenset({MsgType.APPEND, MsgType.HEARTBEAT, MsgType.SNAPSHOT})


@dataclass
class NodeConfig:
    """Where a node lives: node i serves HTTP on base_port + i - 1 and Raft on raft_base_port + i - 1 (by
    default base_port + 100 + i - 1)."""

    id: int
    nodes: int
    data_dir: str
    base_port: int = 7200
    host: str = "127.0.0.1"
    commit_quorum: str = "majority"
    election_tick: int = 15  # x 10 ms: election timeout random in [150, 300) ms
    heartbeat_tick: int = 5  # x 10 ms: 50 ms
    snapshot_every: int = 20_000  # applied entries between two snapshots (log compaction)
    check_quorum: bool = True  # off only to show the seed's "minority leader that believes it leads"
    pre_vote: bool = True  # off only to show a split vote deterministically
    request_timeout: float = 5.0
    raft_base_port: int | None = None

    def http_port(self, node_id: int) -> int:
        return self.base_port + node_id - 1

    def raft_port(self, node_id: int) -> int:
        return (self.raft_base_port or self.base_port + 100) + node_id - 1

    def http_url(self, node_id: int) -> str:
        return f"http://{self.host}:{self.http_port(node_id)}"

    @property
    def max_node_id(self) -> int:
        """The highest node id whose ports exist and are its own: with the default layout node 101's HTTP port
        would be node 1's Raft port."""
        top = 65_535 - max(self.base_port, self.raft_port(1)) + 1
        return min(top, 100) if self.raft_base_port is None else top

    @property
    def node_dir(self) -> str:
        return os.path.join(self.data_dir, f"node-{self.id}")


def _exit() -> NoReturn:
    os._exit(70)  # a replica that cannot persist or apply must stop rather than diverge


@dataclass
class NodeIO:
    """What a node takes from the outside world: the real disk, network, threads, entropy and process
    exit by default. The node simulator (raft/testing/nodesim.py) passes its own, to run this very code
    on virtual time, a simulated network and a simulated disk."""

    disk: Disk = OS_DISK
    # (config, receive) -> an object with start(), send(messages), close(), blocked, block(), unblock()
    transport: Callable[[NodeConfig, Callable[[list[Message]], None]], Any] | None = None
    executor: Callable[[str], concurrent.futures.Executor] | None = None  # a single-threaded one, by name
    rng: random.Random = field(default_factory=random.SystemRandom)
    fatal: Callable[[], NoReturn] = _exit


class StateMachine(Protocol):
    """What a node replicates: any deterministic machine over the committed commands (the KV store by
    default; the coordinator's transaction records later)."""

    def apply(self, command: bytes) -> Any:
        """Apply one committed command; the result is what `RaftNode.submit` returns."""

    def snapshot(self) -> bytes:
        """The whole state, for log compaction and for followers too far behind."""

    def restore(self, blob: bytes) -> None:
        """Replace the whole state with a snapshot's."""


def snapshot_view(machine: StateMachine) -> Callable[[], bytes]:
    """Capture `machine`'s state now; the returned function gives exactly `machine.snapshot()` as of this
    call and may run in any thread while `machine` goes on applying. Cheap for a machine that offers a
    `snapshot_view` of its own (the KV store); another machine is serialised here, on the caller's thread."""
    own_view = getattr(machine, "snapshot_view", None)
    if own_view is not None:
        return own_view()
    blob = machine.snapshot()
    return lambda: blob


class CommitUnknown(Exception):
    """The entry was proposed but this node cannot tell whether it committed (leader change, timeout)."""


class RaftNode:
    """One replica of the KV store; create it, `await start()`, then submit commands and serve reads."""

    def __init__(self, cfg: NodeConfig, machine: StateMachine | None = None, io: NodeIO | None = None) -> None:
        self.cfg = cfg
        self.io = io = io or NodeIO()
        self.storage, rec = Storage.open(cfg.node_dir, disk=io.disk)
        self.machine: StateMachine = machine if machine is not None else KVStateMachine()
        if rec.snapshot is not None:
            self.machine.restore(rec.snapshot.data)
        self.snapshot_index = rec.snapshot.index if rec.snapshot else 0
        # The initial voters; conf changes in the log override them. A node with id > nodes is therefore
        # not a voter (never campaigns) until the leader's log adds it.
        peers = tuple(range(1, cfg.nodes + 1))
        self.core = Raft(
            Config(cfg.id, peers, election_tick=cfg.election_tick, heartbeat_tick=cfg.heartbeat_tick,
                   commit_quorum=cfg.commit_quorum, check_quorum=cfg.check_quorum, pre_vote=cfg.pre_vote,
                   seed=io.rng.randrange(1 << 30)),
            hard_state=rec.hard_state, snapshot=rec.snapshot, entries=rec.entries,
            applied=self.snapshot_index)
        self.applied = self.snapshot_index
        self.recovered_entries = len(rec.entries)
        self.transport = (io.transport(cfg, self.receive) if io.transport is not None
                          else Transport(cfg.id, lambda i: (cfg.host, cfg.raft_port(i)), self.receive))
        executor = io.executor or (lambda name: concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=name))
        self._writer = executor(f"raft-wal-{cfg.id}")
        self._snapshotter = executor(f"raft-snap-{cfg.id}")
        self._snapshot_task: asyncio.Task | None = None
        # The newest writer-thread job the Ready loop does not wait for: a snapshot's record, then quick writes.
        self._background_write: concurrent.futures.Future | None = None
        self._wake = asyncio.Event()
        self._waiters: dict[int, tuple[int, asyncio.Future]] = {}  # log index -> (term proposed in, future)
        self._reads_waiting: list[asyncio.Future] = []  # not yet covered by a read_index request
        self._reads_sent: dict[bytes, list[asyncio.Future]] = {}  # context -> reads it answers
        self._reads_ready: list[tuple[int, int, list[asyncio.Future]]] = []  # heap of (index, seq, futures)
        self._ctx = itertools.count(1)
        self._tasks: list[asyncio.Task] = []
        self._tick_timer: asyncio.TimerHandle | None = None
        self._next_tick = 0.0
        # What a demo or an operator wants to see happen: role changes, votes, rolled-back entries.
        self.boot_id = f"{io.rng.getrandbits(32):08x}"
        self.events: deque[dict] = deque(maxlen=1000)
        self._event_seq = itertools.count(1)
        self._stored_last = rec.entries[-1].index if rec.entries else self.snapshot_index
        self._last_vote = (rec.hard_state.term, rec.hard_state.vote)
        self._event("start", term=rec.hard_state.term, recovered=len(rec.entries),
                    snapshot_index=self.snapshot_index)

    # ------------------------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        await self.transport.start()
        loop = asyncio.get_running_loop()
        self._next_tick = loop.time() + TICK_SECONDS
        self._tick_timer = loop.call_at(self._next_tick, self._tick, loop)
        self._tasks = [loop.create_task(self._ready_loop())]

    async def stop(self) -> None:
        if self._tick_timer is not None:
            self._tick_timer.cancel()
        tasks = [*self._tasks, *([self._snapshot_task] if self._snapshot_task else [])]
        for t in tasks:
            t.cancel()
        for t in tasks:
            try:
                await t
            except asyncio.CancelledError:
                pass
        await self.transport.close()
        self._snapshotter.shutdown(wait=True)
        self._writer.shutdown(wait=True)  # after the snapshotter: a snapshot file being written is finished
        self.storage.close()

    # ------------------------------------------------------------------------------------ client API
    @property
    def is_leader(self) -> bool:
        return self.core.role is Role.LEADER

    async def submit(self, command: bytes) -> Any:
        """Replicate `command`; returns its outcome once committed and applied. Raises NotLeader when it
        certainly was not applied (not the leader, or another leader's entry replaced it), CommitUnknown
        when this node cannot tell (timeout, or a snapshot superseded it)."""
        index = self.core.propose(command)
        fut = asyncio.get_running_loop().create_future()
        self._waiters[index] = (self.core.term, fut)
        self._wake.set()
        try:
            return await asyncio.wait_for(fut, self.cfg.request_timeout)
        except TimeoutError as exc:
            self._waiters.pop(index, None)
            raise CommitUnknown(f"not applied within {self.cfg.request_timeout:g}s") from exc

    async def change_membership(self, cc: ConfChange) -> tuple[int, ...]:
        """Add or remove one voter (single-server change); returns the voters once the change committed.
        Raises NotLeader, ValueError (change refused now: one in progress, or invalid), CommitUnknown."""
        index = self.core.propose_conf_change(cc)
        fut = asyncio.get_running_loop().create_future()
        self._waiters[index] = (self.core.term, fut)
        self._wake.set()
        try:
            await asyncio.wait_for(fut, self.cfg.request_timeout)
        except TimeoutError as exc:
            self._waiters.pop(index, None)
            raise CommitUnknown(f"change not applied within {self.cfg.request_timeout:g}s") from exc
        return self.core.voters

    async def read_barrier(self) -> None:
        """Wait until a read of the local state machine is linearizable (ReadIndex). Raises NotLeader or
        CommitUnknown (leadership not confirmed in time)."""
        if not self.is_leader:
            raise NotLeader(self.core.leader)
        fut = asyncio.get_running_loop().create_future()
        self._reads_waiting.append(fut)
        self._wake.set()
        try:
            await asyncio.wait_for(fut, self.cfg.request_timeout)
        except TimeoutError as exc:
            raise CommitUnknown(f"leadership not confirmed within {self.cfg.request_timeout:g}s") from exc

    def campaign(self) -> None:
        """Start an election now (PreVote first unless disabled)."""
        self.core.campaign()
        self._wake.set()

    def transfer_leadership(self, to: int) -> None:
        self.core.transfer_leadership(to)
        self._wake.set()

    def status(self) -> dict:
        st = self.core.status()
        st["peers"] = {i: self.cfg.http_url(i) for i in self.core.voters}
        st["snapshot_index"] = self.snapshot_index
        st["blocked"] = sorted(self.transport.blocked)
        st["vote"] = self.storage.hard_state.vote
        st["commit_quorum"] = self.cfg.commit_quorum
        return st

    def _event(self, kind: str, **fields: object) -> None:
        self.events.append({"seq": next(self._event_seq), "t": time.time(), "node": self.cfg.id, "kind": kind,
                            **fields})

    def _record_ready(self, rd: Ready) -> None:
        """Note the durable facts of a persisted Ready: a vote cast, entries rolled back."""
        hs = rd.hard_state
        if hs is not None and hs.vote != NONE and (hs.term, hs.vote) != self._last_vote:
            self._event("vote", term=hs.term, to=hs.vote)
        if hs is not None:
            self._last_vote = (hs.term, hs.vote)
        if rd.entries:
            first = rd.entries[0].index
            if first <= self._stored_last:
                self._event("rollback", first=first, last=self._stored_last, term=rd.entries[0].term)
            self._stored_last = rd.entries[-1].index
        if rd.snapshot is not None:
            self._stored_last = max(self._stored_last, rd.snapshot.index)

    # ------------------------------------------------------------------------------------ event loop
    def receive(self, messages: list[Message]) -> None:
        """Step messages from peers into the core (the transport calls this for each inbound frame)."""
        step = self.core.step
        for m in messages:
            step(m)
        if self.core.has_ready():  # a leader's heartbeat acks mostly ask for nothing
            self._wake.set()

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        """Tick the core every TICK_SECONDS. A plain timer callback, not a task, and the Ready loop is woken only
        when the tick gave it work: most ticks only count towards a timeout (measured idle, the ticks were
        most of a replica's CPU)."""
        # After a stall (a long step on the loop, a GC pause) the missed ticks are dropped, as Go's
        # time.Ticker drops them for etcd: firing them in a burst would let this node's timeouts expire
        # before it reads what its peers sent meanwhile (a leader would step down, a follower campaign).
        # The next tick is set first: a tick that raised must not stop the clock.
        self._next_tick = max(self._next_tick + TICK_SECONDS, loop.time())
        self._tick_timer = loop.call_at(self._next_tick, self._tick, loop)
        self.core.tick()
        if self.core.has_ready():
            self._wake.set()

    async def _ready_loop(self) -> None:
        loop = asyncio.get_running_loop()
        core = self.core
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                self._request_reads()
                while core.has_ready():
                    rd = core.ready()
                    messages = rd.messages
                    if core.role is Role.LEADER and rd.messages:
                        # Thesis §10.2.1: a leader may replicate while it writes its own log. Safe here
                        # because it counts as stored only what followers ack, and no commit can be
                        # announced or applied before this Ready's fsync ends (the next Ready waits).
                        early = [m for m in messages if m.type in _LEADER_EARLY]
                        self.transport.send(early)
                        messages = [m for m in messages if m.type not in _LEADER_EARLY]
                    if rd.snapshot is not None or rd.must_sync:
                        await loop.run_in_executor(self._writer, self.storage.save, rd.hard_state, rd.entries,
                                                   rd.snapshot, rd.must_sync)
                    elif rd.hard_state is not None or rd.entries:
                        self._quick_save(rd)
                    self.transport.send(messages)
                    self._record_ready(rd)
                    if rd.snapshot is not None:
                        self._install_snapshot(rd.snapshot)
                    if rd.committed_entries:
                        self._apply(rd.committed_entries)
                    if rd.read_states:
                        for rs in rd.read_states:
                            futs = self._reads_sent.pop(rs.context, None)
                            if futs:
                                heapq.heappush(self._reads_ready, (rs.index, next(self._ctx), futs))
                    self._serve_reads()
                    if rd.soft_state is not None:
                        log.info("node %d: %s in term %d, leader %s", self.cfg.id, rd.soft_state.role.value,
                                 core.term, rd.soft_state.leader or "unknown")
                        self._event("role", role=rd.soft_state.role.value, term=core.term,
                                    leader=rd.soft_state.leader)
                        if rd.soft_state.role is not Role.LEADER:
                            self._fail_reads()
                    core.advance(rd)
                    self._request_reads()
                    if (self._snapshot_task is None
                            and self.applied - self.snapshot_index >= self.cfg.snapshot_every):
                        view = snapshot_view(self.machine)  # taken now: exactly the state at self.applied
                        self._snapshot_task = loop.create_task(self._take_snapshot(self.applied, view))
            except Exception:
                log.exception("node %d: fatal error in the Ready loop", self.cfg.id)
                self.io.fatal()

    def _quick_save(self, rd: Ready) -> None:
        """Write a Ready that needs no fsync (a new commit index): inline while the writer thread is idle,
        else queued behind its snapshot record and not waited for, since storage takes one thread at a time and
        nothing depends on an unsynced write (the next synced save, queued after it, covers it)."""
        if self._background_write is None or self._background_write.done():
            self.storage.save(rd.hard_state, rd.entries, None, False)
            return
        self._background_write = self._writer.submit(self.storage.save, rd.hard_state, rd.entries, None, False)
        self._background_write.add_done_callback(self._stop_if_failed)

    def _stop_if_failed(self, job: concurrent.futures.Future) -> None:
        if job.exception() is not None:
            log.error("node %d: fatal error writing the log", self.cfg.id, exc_info=job.exception())
            self.io.fatal()  # as in the Ready loop: a replica that cannot persist must stop

    def _apply(self, entries: list[Entry]) -> None:
        machine_apply = self.machine.apply
        waiters = self._waiters
        for e in entries:
            outcome = machine_apply(e.data) if e.type is EntryType.NORMAL and e.data else None
            if waiters:
                w = waiters.pop(e.index, None)
                if w is not None and not w[1].done():
                    if w[0] == e.term:
                        w[1].set_result(outcome)
                    else:
                        # Another leader's entry took this index, so ours can never commit: safe to retry.
                        w[1].set_exception(NotLeader(self.core.leader))
        self.applied = entries[-1].index

    def _install_snapshot(self, snap: Snapshot) -> None:
        self.machine.restore(snap.data)
        self.applied = max(self.applied, snap.index)
        self.snapshot_index = snap.index
        for index in [i for i in self._waiters if i <= snap.index]:
            _, fut = self._waiters.pop(index)
            if not fut.done():
                fut.set_exception(CommitUnknown("superseded by a snapshot from the leader"))

    async def _take_snapshot(self, index: int, view: Callable[[], bytes]) -> None:
        """Compact the log up to `index` with the state `view` captured there, and make it durable; the
        Ready loop runs meanwhile. A node that cannot take its snapshot stops, as one that cannot persist."""
        loop = asyncio.get_running_loop()
        try:
            data = await loop.run_in_executor(self._snapshotter, view)
            self.core.compact(index, data)
            snap = self.core.snapshot
            if snap is None or snap.index != index:
                return  # a newer snapshot from the leader was installed meanwhile: ours is obsolete
            # the long write runs beside the log writer, which only records the snapshot once it is durable
            await loop.run_in_executor(self._snapshotter, self.storage.write_snapshot_file, snap)
            self._background_write = job = self._writer.submit(self.storage.record_snapshot, snap)
            await asyncio.wrap_future(job)
            self.snapshot_index = max(self.snapshot_index, index)
        except Exception:
            log.exception("node %d: fatal error taking a snapshot", self.cfg.id)
            self.io.fatal()
        finally:
            self._snapshot_task = None

    def next_read_context(self) -> bytes:
        """A ReadIndex context this node never used, not even before a restart (the boot id tells runs
        apart): the leader keys reads by (sender, context), and a reused one could be confirmed by a
        heartbeat round older than the read, or answer it with another read's index."""
        return b"%s-%d" % (self.boot_id.encode(), next(self._ctx))

    def _request_reads(self) -> None:
        if not self._reads_waiting:
            return
        if len(self._reads_sent) > 1000:  # never answered (leadership stuck): their clients timed out
            self._reads_sent = {c: fs for c, fs in self._reads_sent.items() if not all(f.done() for f in fs)}
        waiting, self._reads_waiting = self._reads_waiting, []
        ctx = self.next_read_context()
        try:
            self.core.read_index(ctx)
        except NotLeader as exc:
            for f in waiting:
                if not f.done():
                    f.set_exception(NotLeader(exc.leader))
            return
        self._reads_sent[ctx] = waiting

    def _serve_reads(self) -> None:
        heap = self._reads_ready
        while heap and heap[0][0] <= self.applied:
            for f in heapq.heappop(heap)[2]:
                if not f.done():
                    f.set_result(None)

    def _fail_reads(self) -> None:
        """Leadership lost: the pending read requests will never be confirmed; let clients retry."""
        pending = [f for futs in self._reads_sent.values() for f in futs] + self._reads_waiting
        self._reads_sent.clear()
        self._reads_waiting = []
        for f in pending:
            if not f.done():
                f.set_exception(NotLeader(self.core.leader))
