"""A seeded, deterministic simulator: many Raft cores in one process over a faulty virtual network.
(`raft/testing/nodesim.py` runs whole node processes, raft/node.py included, the same way.)

Time is virtual (ticks); every source of randomness is one `random.Random(seed)`, so a seed replays the
same run exactly. The network loses, delays, reorders and duplicates messages, holds some for longer than
an election timeout before delivering them (late, out of order, from past terms), can be partitioned, and
can cut links one way (A's messages to B dropped while B's reach A; a node that hears but is not heard,
or is heard but hears nothing). Nodes can be paused with their clock stopped (no ticks, no message or
fsync handling; they resume with their state intact and then handle what reached them meanwhile), and
clocks are skewed: a node's clock runs at 0.5x to 2x the true rate, and the rate may change mid-run.
Each node persists a Ready before sending its messages, and a crash may strike in the middle of that
write (see the disk below). In `async_fsync` mode the fsync takes time, as in raft/node.py: the core keeps
stepping messages meanwhile and a leader sends its APPENDs before its own fsync ends. Nodes compact
their logs (so lagging ones get InstallSnapshot), leaders crash, get isolated or transfer leadership,
some leaders die young (within their first few Readies, the first one being the one that announces the
election, they crash mid-write, freeze, or are cut off from everyone while clients go on writing to them),
some crash right after their commit index advanced (the news of it, and their newer entries, lost), and
some runs add, remove and re-add members, brand-new nodes included (started on one side of a partition,
if any), often asking for a second change at once. After every step the
`SafetyChecker` verifies the five properties of Raft's Figure 3: Election Safety, Leader Append-Only,
Log Matching, Leader Completeness and State Machine Safety; a violation raises `SafetyViolation` naming
the seed and the step. Every fault above applies to every profile of `run_seed` (each seed draws its own
rates, some none).

Each node runs the production code below the core: its log is `raft.storage.Storage` on a
`raft.testing.simdisk.SimDisk`, and its state machine is `raft.kv.KVStateMachine` with client sessions.
A crash is a power loss of that disk: unsynced appends are torn at a sector boundary, sometimes leaving
a zero-filled tail; a crash may also strike in the middle of a write (between any two disk operations of
`Storage.save`, a snapshot or a segment roll). Some runs flip a bit at rest in a stopped node's log
(a sealed or the open segment, or its hard state): the node must then refuse to start with `CorruptLog`
(it is retired, as an operator would take it out) or recover every record it had synced; recovering less
without a word is a failure. A disk whose fsync lies is modelled too (`Faults.lying_fsync`): Raft cannot
survive it, and the durable-quorum check below catches the loss.

`run_seed()` drives a random fault schedule plus KV clients (put / get via ReadIndex on any node /
compare-and-set; writes go through a registered session and are retried with the same sequence number
until they are answered, so a double application shows as a non-linearizable history) whose history
`raft/testing/linearizability.py` checks at the end; then it heals
everything and requires the cluster to converge (a liveness check). An entry applied anywhere must
already be durable on a quorum (checked in runs without membership changes, where the quorum is fixed).
"""

from __future__ import annotations

import heapq
import json
import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from raft.core import Config, NotLeader, Raft
from raft.kv import KVStateMachine, Op, Outcome, Registered, canonical_json, encode_command, encode_register
from raft.storage import CorruptLog, Storage, record_at
from raft.testing.linearizability import KvOp, require_linearizable
from raft.testing.simdisk import DiskCrash, SimDisk
from raft.types import (
    ConfChange,
    Entry,
    EntryType,
    HardState,
    Message,
    MsgType,
    Ready,
    Role,
    Snapshot,
)

_LEADER_EARLY = frozenset({MsgType.APPEND, MsgType.HEARTBEAT, MsgType.SNAPSHOT})


class SafetyViolation(AssertionError):
    """A Raft safety property failed; the message names the seed and step to replay."""


@dataclass(slots=True)
class Faults:
    """Network and disk faults; probabilities are per message (or per Ready for crash_mid_ready)."""

    loss: float = 0.0
    duplicate: float = 0.0
    min_delay: int = 0  # ticks; unequal delays reorder messages
    max_delay: int = 0
    crash_mid_ready: float = 0.0  # crash after writing part of a Ready, before fsync and before sending
    late: float = 0.0  # share of messages held in the network for late_min..late_max ticks, then delivered
    late_min: int = 0  # (set beyond an election timeout: a message from a past term or leadership arrives)
    late_max: int = 0
    # Share of new leaders that die young: within their first few Readies (the first one announces the
    # election) they crash mid-write or freeze for an election timeout or more, that Ready unsent.
    short_lived_leader: float = 0.0
    # Persist like raft/node.py: the fsync runs while the core keeps stepping messages, and a leader sends
    # its APPENDs before its own fsync ends (thesis §10.2.1).
    async_fsync: bool = False
    # Share of a leader's commits followed at once by its crash: it applied them, and the messages that
    # would have spread the news (and its newer entries) are lost.
    crash_after_commit: float = 0.0
    # Share of a stopped node's restarts preceded by one flipped bit in its log or hard state (bit rot);
    # at most one node per cluster is hit, since a node that refuses to start is out for good.
    bit_flip: float = 0.0
    # Share of fsyncs that return without making anything durable: a disk no consensus survives.
    lying_fsync: float = 0.0


NODE_DIR = "/raft/node"
SEGMENT_BYTES = 4096  # small, so that runs roll segments and recover from sealed ones


class DurableLog:
    """What a node has made durable, by the disk's own account (only an fsync that did not lie counts):
    the synced hard state, snapshot and log. The durable-quorum check and restart verification use it."""

    def __init__(self) -> None:
        self.hard = HardState()
        self.snapshot: Snapshot | None = None
        self.entries: list[Entry] = []  # contiguous, starting right after the snapshot

    @classmethod
    def recovered(cls, hard: HardState, snapshot: Snapshot | None, entries: list[Entry]) -> DurableLog:
        d = cls()
        d.hard, d.snapshot, d.entries = hard, snapshot, list(entries)
        return d

    @property
    def offset(self) -> int:
        return (self.snapshot.index if self.snapshot else 0) + 1

    def append(self, ents: list[Entry]) -> None:
        """Write entries, truncating the stored log at ents[0].index (a new leader overwrote a suffix)."""
        i = ents[0].index - self.offset
        if i < 0:
            ents = ents[-i:]
            i = 0
        del self.entries[i:]
        self.entries.extend(ents)

    def term_at(self, index: int) -> int | None:
        if self.snapshot and index <= self.snapshot.index:
            return self.snapshot.term if index == self.snapshot.index else None
        i = index - self.offset
        return self.entries[i].term if 0 <= i < len(self.entries) else None

    def has(self, index: int, term: int) -> bool:
        """Whether this store durably holds entry (index, term), directly or inside its snapshot."""
        if self.snapshot and index <= self.snapshot.index:
            return True
        return self.term_at(index) == term

    def install_snapshot(self, s: Snapshot) -> None:
        keep = [e for e in self.entries if e.index > s.index] if self.term_at(s.index) == s.term else []
        self.snapshot = s
        self.entries = keep

    def absorb(self, write: tuple[str, object]) -> None:
        kind, x = write
        if kind == "snapshot":
            if self.snapshot is None or x.index > self.snapshot.index:  # type: ignore[attr-defined]
                self.install_snapshot(x)  # type: ignore[arg-type]
        elif kind == "entries":
            self.append(x)  # type: ignore[arg-type]
        else:
            self.hard = x  # type: ignore[assignment]

    def lost_in(self, hard: HardState, snapshot: Snapshot | None, entries: list[Entry]) -> str | None:
        """What of this durable state a recovery returning (hard, snapshot, entries) lost, if anything."""
        got = DurableLog.recovered(hard, snapshot, entries)
        mine = self.hard
        if hard.term < mine.term or (hard.term == mine.term and mine.vote and hard.vote != mine.vote):
            return f"hard state {mine} was synced, {hard} recovered"
        if self.snapshot is not None and (snapshot is None or snapshot.index < self.snapshot.index):
            return f"the snapshot at {self.snapshot.index}"
        missing = [(e.index, e.term) for e in self.entries if not got.has(e.index, e.term)]
        return f"synced entries {missing[:5]}{'...' if len(missing) > 5 else ''}" if missing else None


def kv_command(op: str, key: str, a: str, b: str, opid: str = "") -> bytes:
    """A session-less command of the production KV store: ("put", key, value) or ("cas", key, expected,
    value), with an empty expected meaning an absent key; `opid` is ignored (kept for older tests)."""
    if op == "put":
        return encode_command(Op.PUT, key, canonical_json(a), now=0.0)
    return encode_command(Op.CAS, key, canonical_json(b), canonical_json(a) if a else "null", now=0.0)


@dataclass(slots=True)
class _ClientOp:
    op: KvOp | None  # None: a session registration, not in the history
    client: int
    node: int
    deadline: int  # of this attempt
    timeout: int  # ticks per attempt
    read_index: int | None = None
    write: tuple[Op, str, str, str | None] | None = None  # (op, key, value, expected) of a write
    session: int = 0  # a write's session and sequence number: every attempt carries the same pair
    seq: int = 0
    term: int = 0  # the term the entry was proposed in
    until: int = 0  # a write with a session is retried until this tick, then left unanswered


class SimNode:
    def __init__(self, cfg: Config, disk: SimDisk) -> None:
        self.cfg = cfg
        self.id = cfg.id
        self.disk = disk
        self.durable = DurableLog()
        self.pending: list[tuple[str, object]] = []  # written since the last fsync that made all durable
        self.retired: str | None = None  # why this node can never start again (its log is corrupt)
        self.flipped = False  # a bit of its log was flipped at rest
        self.storage: Storage | None = None
        self.raft: Raft | None = None
        self.machine = KVStateMachine()
        self.applied: list[Entry] = []  # every entry applied since the last (re)start, for tests
        self.inflight: tuple[Ready, list[Message], bool] | None = None  # Ready whose fsync runs; unsent; written
        self.waiting: dict[int, _ClientOp] = {}  # log index of a proposed command -> the client op
        self.reads: dict[bytes, _ClientOp] = {}  # ReadIndex context -> the client read
        # A paused process (GC pause, SIGSTOP, a stalled VM): until this tick it neither ticks nor handles
        # anything; what reaches it meanwhile (messages, fsync completions) waits in `backlog`.
        self.paused_until = 0
        self.backlog: list[Message | int] = []
        # Clock rate in half ticks per simulated tick: 2 is the true rate, 1 a slow clock, 4 a clock twice
        # as fast; `phase` carries the half tick left over. `clock` is this node's own time, in ticks: the
        # stamp its state machine commands carry.
        self.rate = 2
        self.phase = 0
        self.clock = 0.0
        self.doomed: int | None = None  # a short-lived leader: Readies it still hands out before it dies
        self.boots = 0  # how many times it started
        self.read_seq = 0  # ReadIndex contexts issued since

    def start(self) -> None:
        """Open the log on this node's disk and rebuild the core and the state machine from it; raises
        CorruptLog when the log is damaged."""
        self.storage, rec = Storage.open(NODE_DIR, SEGMENT_BYTES, disk=self.disk)
        snap_index = rec.snapshot.index if rec.snapshot else 0
        self.raft = Raft(self.cfg, hard_state=rec.hard_state, snapshot=rec.snapshot, entries=rec.entries,
                         applied=snap_index)
        self.machine = KVStateMachine(max_sessions=self.cfg_max_sessions)
        if rec.snapshot is not None:
            self.machine.restore(rec.snapshot.data)
        self.durable = DurableLog.recovered(rec.hard_state, rec.snapshot, rec.entries)
        self.pending = []
        self.applied = []
        self.boots += 1
        self.read_seq = 0

    cfg_max_sessions = 100_000

    def values(self) -> dict[str, object]:
        """The state machine's map, values decoded."""
        return {k: json.loads(v) for k, v in self.machine.data.items()}

    @property
    def up(self) -> bool:
        return self.raft is not None

    @property
    def paused(self) -> bool:
        return self.paused_until > 0


class SafetyChecker:
    """Checks Raft's safety properties (Raft paper, Figure 3) incrementally, after every step."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.step = 0
        self.leader_of_term: dict[int, int] = {}
        # (id, term) -> (last index, its term) of that leader's log when last checked
        self.leader_tail: dict[tuple[int, int], tuple[int, int]] = {}
        # (index, term) -> (type, data, term of the entry before it): what that pair denotes in every log
        self.entry_at: dict[tuple[int, int], tuple[EntryType, bytes, int | None]] = {}
        # index -> [entry term, lowest term in which some node saw it committed]
        self.committed: dict[int, list[int]] = {}
        self.applied: dict[int, tuple[int, bytes]] = {}  # index -> (term, data) applied by some node
        self.seen_commit: dict[int, int] = {}

    def fail(self, what: str) -> None:
        raise SafetyViolation(f"{self.label} step={self.step}: {what}")

    def on_entries(self, nid: int, raft: Raft, ents: list[Entry]) -> None:
        """Log Matching (§5.3): an (index, term) pair fixes the entry and, inductively, the log before it."""
        for e in ents:
            prev = raft.term_at(e.index - 1)
            key = (e.index, e.term)
            got = (e.type, e.data, prev)
            old = self.entry_at.setdefault(key, got)
            if old != got and not (old[:2] == got[:2] and None in (old[2], prev)):
                self.fail(f"Log Matching: node {nid} has {got} at {key}, another node has {old}")

    def on_apply(self, nid: int, e: Entry) -> None:
        """State Machine Safety (§5.4.3): no two nodes apply different entries at the same index."""
        old = self.applied.setdefault(e.index, (e.term, e.data))
        if old != (e.term, e.data):
            self.fail(f"State Machine Safety: node {nid} applied {(e.term, e.data)} at {e.index}, "
                      f"another node applied {old}")

    def on_snapshot_apply(self, nid: int, s: Snapshot) -> None:
        old = self.applied.get(s.index)
        if old is not None and old[0] != s.term:
            self.fail(f"State Machine Safety: node {nid} installed a snapshot at {s.index} of term {s.term}, "
                      f"another node applied term {old[0]} there")

    def check(self, nodes: dict[int, SimNode]) -> None:
        self.step += 1
        for node in nodes.values():
            r = node.raft
            if r is None:
                continue
            self._check_commit(node.id, r, nodes)
            if r.role is Role.LEADER:
                self._check_leader(node.id, r)

    def _check_leader(self, nid: int, r: Raft) -> None:
        term = r.term
        holder = self.leader_of_term.setdefault(term, nid)
        if holder != nid:
            self.fail(f"Election Safety: nodes {holder} and {nid} are both leaders of term {term}")
        key = (nid, term)
        tail = self.leader_tail.get(key)
        last = r.last_index
        if tail is None:
            # Leader Completeness (§5.4): every entry committed before this term is in the new leader's log.
            for idx, (t, cterm) in self.committed.items():
                if cterm < term and idx >= r.first_index and r.term_at(idx) != t:
                    self.fail(f"Leader Completeness: leader {nid} of term {term} lacks committed entry "
                              f"{(idx, t)}")
        else:
            t_idx, t_term = tail
            if last < t_idx or (t_idx >= r.first_index and r.term_at(t_idx) != t_term):
                self.fail(f"Leader Append-Only: leader {nid} of term {term} rewrote its log at {t_idx}")
        self.leader_tail[key] = (last, r.term_at(last) or 0)

    def _check_commit(self, nid: int, r: Raft, nodes: dict[int, SimNode]) -> None:
        prev = self.seen_commit.get(nid, 0)
        c = r.commit
        if c <= prev:
            self.seen_commit[nid] = c
            return
        self.seen_commit[nid] = c
        for idx in range(max(prev + 1, r.first_index), c + 1):
            t = r.term_at(idx)
            assert t is not None
            rec = self.committed.get(idx)
            if rec is None:
                self.committed[idx] = [t, r.term]
                for other in nodes.values():
                    o = other.raft
                    if o is not None and o.role is Role.LEADER and o.term > r.term and idx >= o.first_index:
                        if o.term_at(idx) != t:
                            self.fail(f"Leader Completeness: leader {other.id} of term {o.term} lacks "
                                      f"entry {(idx, t)} committed by node {nid}")
            elif rec[0] != t:
                self.fail(f"State Machine Safety: node {nid} committed {(idx, t)}, another committed "
                          f"{(idx, rec[0])}")
            elif r.term < rec[1]:
                rec[1] = r.term


class Cluster:
    """Raft nodes over a simulated network; the tests drive it tick by tick or let `run_seed` do it."""

    def __init__(
        self,
        n: int = 3,
        *,
        seed: int = 0,
        faults: Faults | None = None,
        check_durable_quorum: bool = True,
        session_timeout: float = 10**9,
        max_sessions: int = 100_000,
        **cfg: object,
    ) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.faults = faults or Faults()
        self.peers = tuple(range(1, n + 1))
        self.cfg_kw = cfg
        self.session_timeout = session_timeout  # in ticks of log time
        self.max_sessions = max_sessions
        self.nodes: dict[int, SimNode] = {}
        for i in self.peers:
            self._new_node(i, self.peers)
        self.checker = SafetyChecker(f"seed={seed}")
        self.now = 0  # ticks
        self.events = 0  # a counter that orders client invocations and responses
        # (due tick, random tie-break, seq, message to deliver or id of a node whose fsync completes)
        self._queue: list[tuple[int, float, int, Message | int]] = []
        self._seq = 0
        self._groups: dict[int, int] | None = None  # node -> partition group; None: fully connected
        self._blocked: set[tuple[int, int]] = set()  # one-way cuts: (frm, to) whose messages are dropped
        self.history: list[KvOp] = []
        self.check_durable_quorum = check_durable_quorum
        self.drop: Callable[[Message], bool] | None = None  # tests: drop the messages this selects
        self.messages_sent = 0
        self.sessions: dict[int, list[int]] = {}  # client -> [session id, last sequence number used]
        self.registering: set[int] = set()  # clients whose registration is in flight
        self.retrying: list[_ClientOp] = []  # writes between two attempts
        self.use_sessions = False  # writes go through sessions and are retried (run_seed turns it on)
        self.retry_for = 120  # ticks a write with a session is retried before it is left unanswered
        self.disk_notes: list[str] = []  # what the disk faults did: flips and their verdicts

    def _config(self, i: int, peers: tuple[int, ...]) -> Config:
        return Config(i, peers, seed=self.seed, **self.cfg_kw)  # type: ignore[arg-type]

    def _new_node(self, i: int, peers: tuple[int, ...]) -> SimNode:
        disk = SimDisk(random.Random(self.rng.getrandbits(64)), lying_fsync=self.faults.lying_fsync)
        node = self.nodes[i] = SimNode(self._config(i, peers), disk)
        node.cfg_max_sessions = self.max_sessions
        node.start()
        return node

    # ---------------------------------------------------------------- access

    def raft(self, i: int) -> Raft:
        r = self.nodes[i].raft
        if r is None:
            raise RuntimeError(f"node {i} is down")
        return r

    def leader(self) -> int | None:
        """The up leader with the highest term, if any."""
        best = None
        for node in self.nodes.values():
            r = node.raft
            if r is not None and r.role is Role.LEADER and (best is None or r.term > self.raft(best).term):
                best = node.id
        return best

    def leaders(self) -> list[int]:
        return [n.id for n in self.nodes.values() if n.raft is not None and n.raft.role is Role.LEADER]

    # ---------------------------------------------------------------- faults

    def partition(self, *groups: tuple[int, ...] | list[int]) -> None:
        """Only nodes in the same group can talk; nodes not named form one more group."""
        self._groups = {}
        for g, members in enumerate(groups):
            for m in members:
                self._groups[m] = g
        for i in self.nodes:
            self._groups.setdefault(i, len(groups))

    def isolate(self, i: int) -> None:
        self.partition([i])

    def block(self, frm: int, to: int) -> None:
        """A one-way cut: frm's messages to `to` are dropped while `to`'s messages to frm still arrive."""
        self._blocked.add((frm, to))

    def heal(self) -> None:
        """Repair the network: partitions and one-way cuts."""
        self._groups = None
        self._blocked.clear()

    def connected(self, a: int, b: int) -> bool:
        """Whether a message from a reaches b (the link may still work the other way)."""
        if self._blocked and (a, b) in self._blocked:
            return False
        return self._groups is None or self._groups.get(a, -1) == self._groups.get(b, -1)

    def pause(self, i: int, ticks: int) -> None:
        """Freeze node i for `ticks` ticks with its clock stopped; unlike a crash it keeps all its state and
        then handles, in order, everything that reached it meanwhile."""
        node = self.nodes[i]
        if node.raft is not None:
            node.paused_until = max(node.paused_until, self.now + ticks)

    def resume(self, i: int) -> None:
        """End node i's pause now."""
        node = self.nodes[i]
        if not node.paused:
            return
        node.paused_until = 0
        backlog, node.backlog = node.backlog, []
        for m in backlog:
            if node.raft is None:
                break
            if isinstance(m, Message):
                self._deliver(m)
            else:
                self._fsync_done(m)
        if node.raft is not None:
            self._process(node)
            self.checker.check(self.nodes)

    def set_clock_rate(self, i: int, rate: float) -> None:
        """Clock skew: node i's clock runs at `rate` (0.5, 1, 1.5 or 2) times the true rate."""
        halves = round(rate * 2)
        if halves not in (1, 2, 3, 4):
            raise ValueError(f"clock rate {rate} out of bounds (0.5 to 2)")
        self.nodes[i].rate = halves

    def crash(self, i: int) -> None:
        """Stop node i: it loses its memory, and its disk whatever a power loss takes (see SimDisk)."""
        node = self.nodes[i]
        node.paused_until = 0
        node.backlog.clear()
        node.doomed = None
        node.inflight = None
        node.raft = None
        node.storage = None
        node.disk.crash()  # (pending writes stay listed: some of them may have reached the disk)
        node.waiting.clear()
        node.reads.clear()

    def restart(self, i: int) -> None:
        """Start node i again from what its disk holds (state machine rebuilt from the snapshot). A node
        whose log is corrupt refuses to start and is retired; one that starts must have every record it
        synced."""
        node = self.nodes[i]
        if node.retired is not None:
            return
        synced, pending = node.durable, node.pending
        try:
            node.start()
        except CorruptLog as exc:
            node.retired = str(exc)
            self.disk_notes.append(f"t={self.now} node {i} refused to start: {exc}")
            return
        except Exception as exc:
            self.checker.fail(f"node {i} cannot restart from its disk: {exc!r}")
        # What a power loss may leave: everything synced plus the unsynced writes up to some point, whole
        # records only (a later one may have overwritten part of the synced log: a new leader's entries).
        got = node.durable
        lost = synced.lost_in(got.hard, got.snapshot, got.entries)
        could_be = DurableLog.recovered(synced.hard, synced.snapshot, synced.entries)
        for w in pending:
            if lost is None:
                break
            could_be.absorb(w)
            if could_be.lost_in(got.hard, got.snapshot, got.entries) is None:
                lost = None
        if lost is not None:
            self.checker.fail(f"node {i} restarted without {lost}: its log lost synced data without a word")

    def flip_bit(self, i: int) -> str | None:
        """Bit rot in stopped node i's log: one bit flipped in a WAL segment (sealed or open) or the hard
        state. Returns what was hit, or None when there is nothing to hit. Not hit: the length field of the
        open segment's last record, a flip the format cannot tell from a write cut short (etcd's WAL has
        the same blind spot)."""
        node = self.nodes[i]
        assert not node.up
        files = [p for p in node.disk.files() if (p.endswith(".log") or p.endswith("hardstate"))
                 and node.disk.size_of(p) > 0]
        if not files:
            return None
        path = self.rng.choice(files)
        data = node.disk.read(path)
        segments = [p for p in files if p.endswith(".log")]
        blind: set[int] = set()
        if segments and path == max(segments):
            pos, last = 0, None
            while (rec := record_at(data, pos)) is not None:
                last, pos = pos, rec[1]
            if last is not None:
                blind = set(range(last, last + 4))
        offsets = [k for k in range(len(data)) if k not in blind]
        if not offsets:
            return None
        at = self.rng.choice(offsets)
        node.disk.flip_bit(path, at, self.rng.randrange(8))
        sealed = "hard state" if path.endswith("hardstate") else (
            "open segment" if path == max(segments) else "sealed segment")
        what = f"{sealed} {os.path.basename(path)} byte {at} of {len(data)}"
        self.disk_notes.append(f"t={self.now} flip node {i}: {what}")
        return what

    def add_node(self, i: int, voter: bool = True) -> None:
        """Start a brand-new node i (empty log) that knows the current voters, plus itself unless it joins
        as a learner (it then learns its membership from the leader's log or snapshot)."""
        ldr = self.leader()
        voters = self.raft(ldr).voters if ldr else self.peers
        peers = {*voters, i} if voter else set(voters)
        self._new_node(i, tuple(sorted(peers)))
        self.checker.seen_commit[i] = 0
        if self._groups is not None and i not in self._groups:
            # a machine started during a partition lands on one side of it
            self._groups[i] = self.rng.choice(sorted(set(self._groups.values())))

    def compact(self, i: int) -> None:
        """Node i snapshots its state machine at its applied index and drops the log up to it (the file
        written and synced, then recorded in the log, as raft/node.py does); a crash may strike midway."""
        node = self.nodes[i]
        r = self.raft(i)
        idx = r.applied
        if idx <= (r.snapshot.index if r.snapshot else 0):
            return
        r.compact(idx, node.machine.snapshot())
        assert r.snapshot is not None and node.storage is not None
        if self.faults.crash_mid_ready and self.rng.random() < self.faults.crash_mid_ready:
            node.disk.crash_after(self.rng.randint(1, 8))
        node.pending.append(("snapshot", r.snapshot))
        try:
            node.storage.save_snapshot(r.snapshot)
        except DiskCrash:
            self.crash(i)
            return
        node.disk.crash_after(None)
        self._synced(node)

    def _synced(self, node: SimNode) -> None:
        """After an fsync: if the disk now holds everything written, the pending writes are durable."""
        if node.disk.all_synced():
            for w in node.pending:
                node.durable.absorb(w)
            node.pending.clear()

    def _write(self, node: SimNode, rd: Ready, sync: bool) -> None:
        """Hand a Ready's hard state, snapshot and entries to the node's storage (and fsync them)."""
        assert node.storage is not None
        if rd.snapshot is not None:  # listed first: a crash in the middle of `save` may keep some of them
            node.pending.append(("snapshot", rd.snapshot))
        if rd.entries:
            node.pending.append(("entries", rd.entries))
        if rd.hard_state is not None:
            node.pending.append(("hard", rd.hard_state))
        node.storage.save(rd.hard_state, rd.entries, rd.snapshot, sync)
        if sync:
            self._synced(node)

    def _write_then_crash(self, node: SimNode, rd: Ready | None) -> None:
        """A crash in the middle of persisting `rd` (after any of its disk operations, or before all)."""
        if rd is not None and node.storage is not None:
            node.disk.crash_after(self.rng.randint(1, 8))
            try:
                self._write(node, rd, rd.must_sync)
            except DiskCrash:
                pass
        self.crash(node.id)

    # ---------------------------------------------------------------- driving

    def tick(self, n: int = 1) -> None:
        """Advance virtual time: every up node that is not paused ticks (as often as its clock rate says:
        0, 1 or 2 times), then every message due is delivered."""
        for _ in range(n):
            self.now += 1
            for node in self.nodes.values():
                if node.raft is None:
                    continue
                if node.paused:
                    if node.paused_until > self.now:
                        continue
                    self.resume(node.id)
                node.phase += node.rate
                node.clock += node.rate / 2
                for _ in range(node.phase // 2):
                    if node.raft is None:
                        break
                    node.raft.tick()
                    self._process(node)
                node.phase %= 2
            self._deliver_due()
            self._expire_client_ops()

    def stabilize(self, max_rounds: int = 1000) -> None:
        """Deliver every queued message now (no time passes) until the network is quiet."""
        for _ in range(max_rounds):
            for node in self.nodes.values():
                if node.raft is not None and node.raft.has_ready():
                    self._process(node)
            if not self._queue:
                return
            batch, self._queue = self._queue, []
            batch.sort()
            for *_, m in batch:
                self._deliver(m) if isinstance(m, Message) else self._fsync_done(m)
        raise RuntimeError("network did not stabilize")

    def run_until(self, pred: Callable[[], bool], max_ticks: int) -> bool:
        for _ in range(max_ticks):
            if pred():
                return True
            self.tick()
        return pred()

    def wait_leader(self, max_ticks: int = 2000) -> int:
        if not self.run_until(lambda: self.leader() is not None, max_ticks):
            raise AssertionError(f"no leader after {max_ticks} ticks")
        ldr = self.leader()
        assert ldr is not None
        return ldr

    def wait_leader_in(self, group: list[int] | tuple[int, ...], max_ticks: int = 2000) -> int:
        """Run until one of `group` is leader; returns it."""

        def found() -> int | None:
            return next((i for i in group if self.nodes[i].raft is not None
                         and self.raft(i).role is Role.LEADER), None)

        if not self.run_until(lambda: found() is not None, max_ticks):
            raise AssertionError(f"no leader among {list(group)} after {max_ticks} ticks")
        ldr = found()
        assert ldr is not None
        return ldr

    def stabilize_node(self, i: int) -> None:
        """Let node i hand out the Ready a direct call (propose, transfer...) produced."""
        node = self.nodes[i]
        if node.raft is not None:
            self._process(node)

    def step(self, m: Message) -> None:
        """Hand a message to its addressee right now (tests that script messages by hand)."""
        self._deliver(m)

    def _deliver_due(self) -> None:
        q = self._queue
        budget = 100_000  # zero-delay ping-pong that never ends within a tick is a livelock
        while q and q[0][0] <= self.now:
            m = heapq.heappop(q)[3]
            self._deliver(m) if isinstance(m, Message) else self._fsync_done(m)
            budget -= 1
            if not budget:
                self.checker.fail(f"livelock: messages keep flowing within tick {self.now}")

    def _deliver(self, m: Message) -> None:
        node = self.nodes.get(m.to)
        if node is None or node.raft is None or not self.connected(m.frm, m.to):
            return
        if self.drop is not None and self.drop(m):
            return
        if node.paused:
            node.backlog.append(m)  # it reached the host; the frozen process reads it when it resumes
            return
        node.raft.step(m)
        self._process(node)
        self.checker.check(self.nodes)

    def _send(self, m: Message) -> None:
        self.messages_sent += 1
        f = self.faults
        rng = self.rng
        if f.loss and rng.random() < f.loss:
            return
        copies = 2 if f.duplicate and rng.random() < f.duplicate else 1
        for _ in range(copies):
            if f.late and rng.random() < f.late:
                delay = rng.randint(f.late_min, f.late_max)
            else:
                delay = rng.randint(f.min_delay, f.max_delay) if f.max_delay else f.min_delay
            self._seq += 1
            heapq.heappush(self._queue, (self.now + delay, rng.random(), self._seq, m))

    def _process(self, node: SimNode) -> None:
        """Handle one Ready the way raft/node.py does: persist (fsync), send, apply, advance."""
        r = node.raft
        assert r is not None
        if node.paused:
            return
        for _ in range(10_000):
            if node.inflight is not None or not r.has_ready():
                return
            rd = r.ready()
            if rd.entries:
                self.checker.on_entries(node.id, r, rd.entries)
            if self._dies_young(node, rd):
                return
            if self.faults.async_fsync:
                rest = rd.messages
                if r.role is Role.LEADER:
                    for m in rest:
                        if m.type in _LEADER_EARLY:
                            self._send(m)
                    rest = [m for m in rest if m.type not in _LEADER_EARLY]
                self._write(node, rd, sync=False)  # written now; the fsync completes later
                node.inflight = (rd, rest, True)
                self._seq += 1
                heapq.heappush(self._queue, (self.now + self.rng.randint(0, 1), self.rng.random(), self._seq,
                                             node.id))
                return
            self._finish(node, rd, rd.messages, written=False)
            if node.raft is None:
                return
        self.checker.fail(f"node {node.id} keeps producing Ready batches (livelock)")

    def _dies_young(self, node: SimNode, rd: Ready) -> bool:
        """The short-lived leader fault: True if node died (crashed or froze) with `rd` neither written in
        full nor sent."""
        f = self.faults
        if rd.soft_state is not None and rd.soft_state.role is Role.LEADER and f.short_lived_leader:
            node.doomed = self.rng.randint(0, 3) if self.rng.random() < f.short_lived_leader else None
        if node.doomed is None or not f.short_lived_leader:
            node.doomed = None  # (faults healed meanwhile)
            return False
        if node.doomed > 0:
            node.doomed -= 1
            return False
        node.doomed = None
        x = self.rng.random()
        if x < 0.3:
            # cut off from everyone: it goes on leading alone, taking writes that only it holds
            self.isolate(node.id)
            return False
        if x < 0.65:
            self._write_then_crash(node, rd)  # a torn write of this Ready; nothing sent
        else:
            et = int(self.cfg_kw.get("election_tick", 15))  # type: ignore[call-overload]
            node.inflight = (rd, rd.messages, False)
            self.pause(node.id, self.rng.randint(et, 3 * et))
            node.backlog.append(node.id)  # on resuming it finishes this Ready (write, fsync, send, apply)
        self.checker.check(self.nodes)
        return True

    def _fsync_done(self, i: int) -> None:
        node = self.nodes[i]
        if node.raft is None or node.inflight is None:
            return
        if node.paused:
            node.backlog.append(i)  # the write is done; the frozen process learns it when it resumes
            return
        rd, rest, written = node.inflight
        node.inflight = None
        self._finish(node, rd, rest, written)
        if node.raft is not None:
            self._process(node)

    def _finish(self, node: SimNode, rd: Ready, messages: list[Message], written: bool) -> None:
        """The Ready's writes reach the disk (fsync), then its messages go out, then it is applied."""
        r = node.raft
        assert r is not None and node.storage is not None
        p_crash = self.faults.crash_mid_ready
        if p_crash and rd.must_sync and self.rng.random() < p_crash:
            # a crash before the fsync ends: a torn write of this Ready; nothing sent, nothing applied
            self._write_then_crash(node, None if written else rd)
            self.checker.check(self.nodes)
            return
        if not written:
            self._write(node, rd, rd.must_sync)
        elif rd.must_sync:
            node.storage.save(None, [], None, sync=True)
            self._synced(node)
        f = self.faults
        if (f.crash_after_commit and rd.committed_entries and r.role is Role.LEADER
                and self.rng.random() < f.crash_after_commit):
            self._apply(node, rd)
            self.crash(node.id)
            self.checker.check(self.nodes)
            return
        for m in messages:
            self._send(m)
        self._apply(node, rd)
        r.advance(rd)
        self.checker.check(self.nodes)

    def _apply(self, node: SimNode, rd: Ready) -> None:
        if rd.snapshot is not None:
            self.checker.on_snapshot_apply(node.id, rd.snapshot)
            node.machine.restore(rd.snapshot.data)
            for index in [i for i in node.waiting if i <= rd.snapshot.index]:
                self._attempt_failed(node.waiting.pop(index))  # its fate is unknown here: ask again
        for e in rd.committed_entries:
            self.checker.on_apply(node.id, e)
            if self.check_durable_quorum:
                self._check_durable_quorum(node.id, e)
            node.applied.append(e)
            outcome = node.machine.apply(e.data) if e.type is EntryType.NORMAL and e.data else None
            c = node.waiting.pop(e.index, None)
            if c is not None:
                if c.term != e.term:
                    self._attempt_failed(c)  # another leader's entry took its index: it never applied
                else:
                    self._answered(c, outcome)
        r = node.raft
        assert r is not None
        applied = rd.committed_entries[-1].index if rd.committed_entries else r.applied
        if rd.snapshot is not None:
            applied = max(applied, rd.snapshot.index)
        for rs in rd.read_states:
            c = node.reads.get(rs.context)
            if c is not None:
                c.read_index = rs.index
        for ctx, c in list(node.reads.items()):
            if c.read_index is not None and applied >= c.read_index:
                del node.reads[ctx]
                assert c.op is not None
                value = node.machine.get(c.op.key)
                self._respond(c, None if value is None else json.loads(value))

    def _check_durable_quorum(self, nid: int, e: Entry) -> None:
        """An entry is applied only after a quorum of voters stored it durably (§5.3; `all` for sync mode),
        by the disks' own account: a write whose fsync lied does not count. (A node retired since counts
        with what it held: Raft survives losing a minority for good.)"""
        holders = sum(1 for n in self.nodes.values() if n.durable.has(e.index, e.term))
        need = len(self.peers) if self.cfg_kw.get("commit_quorum") == "all" else len(self.peers) // 2 + 1
        if holders < need:
            self.checker.fail(f"node {nid} applied {(e.index, e.term)}, durable on {holders} nodes only")

    # ---------------------------------------------------------------- KV clients

    def client_put(self, client: int, node: int, key: str, value: str, timeout: int) -> bool:
        """Start a put on `node`; False if it cannot even be started. With `use_sessions` it needs the
        client's session (see `client_register`) and is retried until `retry_for` ticks have passed."""
        op = KvOp(client, "put", key, 0, value=value)
        return self._client_write(op, node, (Op.PUT, key, canonical_json(value), None), timeout)

    def client_cas(self, client: int, node: int, key: str, expected: str | None, value: str,
                   timeout: int) -> bool:
        op = KvOp(client, "cas", key, 0, value=value, expected=expected)
        want = "null" if expected is None else canonical_json(expected)  # null: the key is absent
        return self._client_write(op, node, (Op.CAS, key, canonical_json(value), want), timeout)

    def client_get(self, client: int, node: int, key: str, timeout: int) -> bool:
        """Start a linearizable read on `node` via ReadIndex; False if it cannot even be started."""
        n = self.nodes[node]
        if n.raft is None or n.paused:
            return False
        self.events += 1
        op = KvOp(client, "get", key, self.events)
        # as raft/node.py numbers them: unique within one run of one node only (the boot tells runs apart),
        # so the leader must key pending reads by sender and context
        n.read_seq += 1
        ctx = b"%d-%d" % (n.boots, n.read_seq)
        try:
            n.raft.read_index(ctx)
        except NotLeader:
            return False
        c = _ClientOp(op, client, node, self.now + timeout, timeout)
        n.reads[ctx] = c
        self.history.append(op)
        self._process(n)
        return True

    def client_register(self, client: int, node: int, timeout: int) -> bool:
        """Open a session for `client` (a REGISTER command); its writes then carry it."""
        if client in self.registering:
            return False
        c = _ClientOp(None, client, node, 0, timeout)
        if not self._propose(c, node):
            return False
        self.registering.add(client)
        return True

    def _client_write(self, op: KvOp, node: int, write: tuple[Op, str, str, str | None], timeout: int) -> bool:
        c = _ClientOp(op, op.client, node, 0, timeout, write=write)
        if self.use_sessions:
            session = self.sessions.get(op.client)
            if session is None:
                return False
            c.session, c.seq, c.until = session[0], session[1] + 1, self.now + self.retry_for
        if not self._propose(c, node):
            return False
        if c.session:
            self.sessions[op.client][1] = c.seq
        self.events += 1
        op.call = self.events
        self.history.append(op)
        return True

    def _propose(self, c: _ClientOp, node_id: int) -> bool:
        """One attempt of a write or registration on `node_id`, stamped with that node's clock."""
        n = self.nodes[node_id]
        if n.raft is None or n.paused:
            return False
        if c.write is None:
            command = encode_register(now=n.clock, session_timeout=self.session_timeout)
        else:
            op, key, value, expected = c.write
            command = encode_command(op, key, value, expected, c.session, c.seq, now=n.clock,
                                     session_timeout=self.session_timeout)
        try:
            index = n.raft.propose(command)
        except NotLeader:
            return False
        old = n.waiting.pop(index, None)
        if old is not None:  # this leader overwrote its own older entry there: that one never applies
            self._attempt_failed(old)
        c.node, c.term, c.deadline = node_id, n.raft.term, self.now + c.timeout
        n.waiting[index] = c
        self._process(n)
        return True

    def _answered(self, c: _ClientOp, outcome: object) -> None:
        if c.op is None:
            self.registering.discard(c.client)
            if isinstance(outcome, Registered):
                self.sessions[c.client] = [outcome.session, 0]
            return
        if outcome is Outcome.SESSION_EXPIRED:
            # refused, not applied now; an earlier attempt may have applied: the op stays unanswered
            if self.sessions.get(c.client, [0])[0] == c.session:
                del self.sessions[c.client]
            c.until = 0
            return
        if outcome not in (Outcome.OK, Outcome.CONFLICT):
            self.checker.fail(f"client {c.client}'s {c.op.kind} (session {c.session}, seq {c.seq}) got "
                              f"{outcome!r}: exactly-once is broken")
        self._respond(c, outcome is Outcome.OK)

    def _attempt_failed(self, c: _ClientOp) -> None:
        """An attempt that can no longer be answered (timed out, its entry overwritten or superseded)."""
        if c.op is None:
            self.registering.discard(c.client)
        elif c.session and self.now < c.until and c.op.ret is None:
            self.retrying.append(c)

    def _respond(self, c: _ClientOp, result: object) -> None:
        assert c.op is not None
        if c.op.ret is not None or c.deadline < self.now:
            return
        self.events += 1
        c.op.ret = self.events
        c.op.output = result

    def _expire_client_ops(self) -> None:
        for node in self.nodes.values():
            for table in (node.waiting, node.reads):
                for k in [k for k, c in table.items() if c.deadline < self.now]:
                    c = table.pop(k)
                    if table is node.waiting:
                        self._attempt_failed(c)
        retry, self.retrying = self.retrying, []
        ldr = self.leader()
        for c in retry:
            if self.now >= c.until or c.op is None or c.op.ret is not None:
                continue  # given up: the op stays unanswered (its fate is unknown)
            if ldr is None or not self._propose(c, ldr):
                self.retrying.append(c)

    def in_flight(self, op: KvOp) -> bool:
        """Whether a client is still waiting for `op` (an attempt in a node, or one to retry)."""
        return any(c.op is op for c in self.retrying) or any(
            c.op is op for nd in self.nodes.values() for c in (*nd.waiting.values(), *nd.reads.values()))


# -------------------------------------------------------------------- random runs


@dataclass(slots=True)
class SeedReport:
    seed: int
    nodes: int
    ticks: int
    ops: int
    completed: int
    commit: int
    leader_changes: int
    messages: int
    faults: list[str] = field(default_factory=list)
    retired: int = 0  # nodes that refused to start on a corrupt log


def run_seed(
    seed: int,
    ticks: int = 400,
    *,
    heal_ticks: int = 400,
    membership: bool | None = None,
    crashy: bool = False,
    lying_fsync: float = 0.0,
) -> SeedReport:
    """One random run: faults for `ticks`, then everything heals and the cluster must converge.

    `membership` forces membership changes on or off (by default the seed decides, 1 run in 5).
    `crashy` always uses slow fsyncs and crashes often, many of them in the middle of a write.
    `lying_fsync` is the share of fsyncs that return without making anything durable (off by default:
    no consensus protocol survives a disk that lies; the tests show the run catches it).

    Raises SafetyViolation if a safety property fails at any step, or AssertionError if the KV history is
    not linearizable or the healed cluster does not converge (a liveness check).
    """
    rng = random.Random(seed ^ 0x5EED)
    n = rng.choice((3, 3, 3, 5))
    quorum = "all" if rng.random() < 0.1 else "majority"
    election_tick = rng.choice((6, 10, 15))
    faults = Faults(
        loss=rng.choice((0.0, 0.02, 0.1, 0.2)),
        duplicate=rng.choice((0.0, 0.05)),
        min_delay=0,
        max_delay=rng.choice((0, 1, 3)),
        crash_mid_ready=rng.choice((0.0, 0.0, 0.01, 0.05)),
        async_fsync=rng.random() < 0.5,
        late=rng.choice((0.0, 0.005, 0.02, 0.05)),
        late_min=election_tick + 1,
        late_max=3 * election_tick,
        short_lived_leader=rng.choice((0.0, 0.1, 0.3, 0.5)),
        crash_after_commit=rng.choice((0.0, 0.0, 0.05, 0.2)),
        lying_fsync=lying_fsync,
    )
    if crashy:
        faults.crash_mid_ready = rng.choice((0.02, 0.05, 0.1))
        faults.async_fsync = True
    drawn = rng.random() < 0.2
    membership = drawn if membership is None else membership
    # bit rot needs a quorum left when the node it hits is out for good (membership runs may remove one more)
    faults.bit_flip = rng.choice((0.0, 0.0, 0.3, 1.0)) if quorum == "majority" and not membership else 0.0
    cl = Cluster(
        n,
        seed=seed,
        faults=faults,
        check_durable_quorum=not membership,
        session_timeout=rng.choice((40.0, 150.0, 1e9)),  # log time, in ticks of the leaders' clocks
        max_sessions=rng.choice((2, 3, 100_000)),  # past it, registering evicts the least recently active
        election_tick=election_tick,
        heartbeat_tick=rng.choice((1, 2, 3)),
        pre_vote=rng.random() < 0.7,
        check_quorum=rng.random() < 0.7,
        commit_quorum=quorum,
        max_entries_per_msg=rng.choice((1, 4, 64)),
        max_inflight_msgs=rng.choice((1, 4, 64)),
    )
    skew = rng.random() < 0.3  # clocks run at different rates, and may change rate during the run
    if skew:
        for i in cl.nodes:
            cl.set_clock_rate(i, rng.choice(_RATES))
    cl.use_sessions = True
    notes = [f"n={n} quorum={quorum} {faults} membership={membership} crashy={crashy} "
             f"clock rates={[cl.nodes[i].rate / 2 for i in cl.nodes] if skew else 'true'} "
             f"session timeout={cl.session_timeout} max sessions={cl.max_sessions}"]
    keys = ("x", "y")
    clients = {c: 0 for c in range(3)}  # client -> tick at which it may issue its next op
    busy: dict[int, KvOp] = {}
    removed: list[int] = []
    leader_changes = 0
    last_leader = None
    try:
        for t in range(ticks):
            _random_fault(cl, rng, notes, removed, membership, skew)
            if crashy and rng.random() < 0.03:
                i = rng.choice(list(cl.nodes))
                if cl.nodes[i].up:
                    cl.crash(i)
                    notes.append(f"t={cl.now} crash {i}")
                else:
                    _restart(cl, rng, i, notes)
            for c in clients:
                op = busy.get(c)
                if op is not None and (op.ret is not None or not cl.in_flight(op)):
                    busy.pop(c)
                    clients[c] = t + rng.randint(0, 4)
                if c not in busy and t >= clients[c]:
                    _client_op(cl, rng, c, keys, busy)
            cl.tick()
            ldr = cl.leader()
            if ldr is not None and ldr != last_leader:
                leader_changes += 1
                last_leader = ldr
        # Heal: every node up, network perfect; the cluster must elect a leader and converge.
        cl.heal()
        cl.faults = Faults(async_fsync=faults.async_fsync)
        for i, node in cl.nodes.items():
            node.disk.lying_fsync = 0.0
            cl.resume(i)
            cl.set_clock_rate(i, 1)
            if not node.up:
                _restart(cl, rng, i, notes)
        converged = cl.run_until(lambda: _converged(cl), heal_ticks)
        if not converged:
            raise AssertionError(f"seed={seed}: cluster did not converge after healing: "
                                 f"{[nd.raft.status() for nd in cl.nodes.values() if nd.raft]}")
    except (SafetyViolation, AssertionError) as exc:
        raise type(exc)(f"{exc}\nfaults: {'; '.join(notes + cl.disk_notes)}") from None
    require_linearizable(cl.history, f"seed={seed}")
    commit = max(nd.raft.commit for nd in cl.nodes.values() if nd.raft)
    return SeedReport(seed, n, cl.now, len(cl.history), sum(o.ret is not None for o in cl.history),
                      commit, leader_changes, cl.messages_sent, notes + cl.disk_notes,
                      sum(nd.retired is not None for nd in cl.nodes.values()))


def _restart(cl: Cluster, rng: random.Random, i: int, notes: list[str]) -> None:
    """Restart stopped node i; with the bit-rot fault, first flip a bit in its log (one node per run)."""
    if cl.nodes[i].retired is not None:
        return
    f = cl.faults
    if f.bit_flip and not any(nd.flipped for nd in cl.nodes.values()) and rng.random() < f.bit_flip:
        cl.nodes[i].flipped = cl.flip_bit(i) is not None
    cl.restart(i)
    notes.append(f"t={cl.now} restart {i}" + (f" (refused: {cl.nodes[i].retired})" if cl.nodes[i].retired else ""))


def _client_op(cl: Cluster, rng: random.Random, c: int, keys: tuple[str, ...], busy: dict[int, KvOp]) -> None:
    ldr = cl.leader()
    up = [i for i, nd in cl.nodes.items() if nd.up]
    if not up:
        return
    node = ldr if ldr is not None and rng.random() < 0.8 else rng.choice(up)
    if cl.use_sessions and c not in cl.sessions:
        cl.client_register(c, node, 40)
        return
    key = rng.choice(keys)
    kind = rng.random()
    value = f"v{cl.events + 1}"
    timeout = 40
    if kind < 0.4:
        started = cl.client_put(c, node, key, value, timeout)
    elif kind < 0.75:
        started = cl.client_get(c, node, key, timeout)
    else:
        cur = cl.nodes[node].values().get(key) if rng.random() < 0.8 else None
        started = cl.client_cas(c, node, key, cur, value, timeout)
    if started:
        busy[c] = cl.history[-1]


_RATES = (0.5, 1, 1, 1.5, 2)  # clock rates relative to true time, for runs with clock skew


def _random_fault(
    cl: Cluster, rng: random.Random, notes: list[str], removed: list[int], membership: bool, skew: bool
) -> None:
    x = rng.random()
    ids = list(cl.nodes)
    if x < 0.01:
        i = rng.choice(ids)
        if cl.nodes[i].up:
            cl.crash(i)
            notes.append(f"t={cl.now} crash {i}")
    elif x < 0.03:
        down = [i for i in ids if not cl.nodes[i].up]
        if down:
            i = rng.choice(down)
            _restart(cl, rng, i, notes)
    elif x < 0.04:
        rng.shuffle(ids)
        k = rng.randint(1, len(ids) - 1)
        cl.partition(ids[:k])
        notes.append(f"t={cl.now} partition {sorted(ids[:k])}")
    elif x < 0.055:
        cl.heal()
        notes.append(f"t={cl.now} heal")
    elif x < 0.065:
        up = [i for i in ids if cl.nodes[i].up and not cl.nodes[i].paused]
        if up:
            i = rng.choice(up)
            cl.compact(i)
            notes.append(f"t={cl.now} compact {i}")
    elif x < 0.075:
        ldr = cl.leader()
        if ldr is not None:
            if rng.random() < 0.5:
                cl.crash(ldr)
                notes.append(f"t={cl.now} crash leader {ldr}")
            else:
                cl.isolate(ldr)
                notes.append(f"t={cl.now} isolate leader {ldr}")
    elif x < 0.08:
        ldr = cl.leader()
        if ldr is not None and not cl.nodes[ldr].paused:
            to = rng.choice([i for i in cl.raft(ldr).voters if i != ldr] or [ldr])
            try:
                cl.raft(ldr).transfer_leadership(to)
            except (ValueError, NotLeader):
                return
            cl.stabilize_node(ldr)
            notes.append(f"t={cl.now} transfer {ldr}->{to}")
    elif x < 0.1:
        if membership:
            _random_conf_change(cl, rng, notes, removed)
    elif x < 0.108:
        _random_one_way_cut(cl, rng, notes)
    elif x < 0.113:
        up = [i for i in ids if cl.nodes[i].up and not cl.nodes[i].paused]
        ldr = cl.leader()
        i = ldr if ldr is not None and rng.random() < 0.5 else rng.choice(up) if up else None
        if i is not None and not cl.nodes[i].paused:
            et = int(cl.cfg_kw.get("election_tick", 15))  # type: ignore[call-overload]
            d = rng.randint(1, 4 * et)
            cl.pause(i, d)
            notes.append(f"t={cl.now} pause {i} for {d}")
    elif skew and x < 0.116:
        i = rng.choice(ids)
        rate = rng.choice(_RATES)
        cl.set_clock_rate(i, rate)
        notes.append(f"t={cl.now} clock {i} x{rate}")


def _random_one_way_cut(cl: Cluster, rng: random.Random, notes: list[str]) -> None:
    """A link that works one way only: between two nodes, or around a node (the leader, half the time)."""
    ids = list(cl.nodes)
    y = rng.random()
    ldr = cl.leader()
    a = ldr if ldr is not None and rng.random() < 0.5 else rng.choice(ids)
    others = [i for i in ids if i != a]
    if not others:
        return
    if y < 0.4:
        b = rng.choice(others)
        cl.block(a, b)
        notes.append(f"t={cl.now} cut {a}->{b}")
    elif y < 0.7:
        for b in others:
            cl.block(a, b)
        notes.append(f"t={cl.now} cut {a}->all (it hears, is not heard)")
    else:
        for b in others:
            cl.block(b, a)
        notes.append(f"t={cl.now} cut all->{a} (it is heard, hears nothing)")


def _random_conf_change(cl: Cluster, rng: random.Random, notes: list[str], removed: list[int]) -> None:
    """One membership change; half the time the operator at once asks for another (replacing a node is an
    add then a remove): the leader must refuse it while the first is uncommitted (thesis §4.1)."""
    for _ in range(3):
        if not _one_conf_change(cl, rng, notes, removed) or rng.random() < 0.5:
            return


def _one_conf_change(cl: Cluster, rng: random.Random, notes: list[str], removed: list[int]) -> bool:
    ldr = cl.leader()
    if ldr is None or cl.nodes[ldr].paused:
        return False
    r = cl.raft(ldr)
    try:
        if removed and rng.random() < 0.6:
            i = removed[0]
            r.propose_conf_change(ConfChange("add", i))
            removed.pop(0)
            notes.append(f"t={cl.now} add {i}")
        elif len(cl.nodes) < 7 and rng.random() < 0.3:
            i = max(cl.nodes) + 1
            op = rng.choice(("add", "add-learner"))
            r.propose_conf_change(ConfChange(op, i))
            # a brand-new, empty node that knows the voters (itself included unless it is a learner)
            cl.add_node(i, voter=op == "add")
            notes.append(f"t={cl.now} {op} new node {i}")
        elif r.learners and rng.random() < 0.5:
            i = rng.choice(r.learners)
            r.propose_conf_change(ConfChange("promote", i))  # refused while the learner lags
            notes.append(f"t={cl.now} promote {i}")
        elif len(r.voters) > 2 or r.learners:
            i = rng.choice([*r.learners] if len(r.voters) <= 2 else [*r.voters, *r.learners])
            r.propose_conf_change(ConfChange("remove", i))
            removed.append(i)
            notes.append(f"t={cl.now} remove {i}")
        else:
            return False
    except (ValueError, NotLeader):
        return False
    return True


def _converged(cl: Cluster) -> bool:
    """A leader exists, and every node has applied the same commit index, which includes a current no-op."""
    ldr = cl.leader()
    if ldr is None:
        return False
    lr = cl.raft(ldr)
    if lr.commit < lr.last_index:
        return False
    members = [cl.nodes[i] for i in (*lr.voters, *lr.learners) if cl.nodes[i].retired is None]
    return all(nd.raft is not None and nd.raft.applied == lr.commit for nd in members)


__all__ = ["NODE_DIR", "Cluster", "DurableLog", "Faults", "SafetyChecker", "SafetyViolation", "SeedReport",
           "SimNode", "kv_command", "run_seed"]
