"""Raft as a deterministic state machine: ticks and messages in, `Ready` batches out (etcd-io/raft's shape).

No asyncio, sockets, files, clock or global random live here: the same inputs always give the same
outputs, which is what lets `raft/testing/sim.py` replay any failing seed exactly. Section numbers in
comments refer to the Raft paper (Ongaro & Ousterhout, 2014) and Ongaro's thesis (2014, "thesis §").

Caller contract (what `raft/node.py` and `raft/testing/sim.py` do):
  rd = raft.ready()          # at most one Ready outstanding: call advance(rd) before the next ready()
  persist rd.hard_state, rd.snapshot, rd.entries (truncating at rd.entries[0].index); fsync if must_sync
  send rd.messages
  apply rd.snapshot, then rd.committed_entries, serve rd.read_states once applied >= their index
  raft.advance(rd)
`tick()`, `step()`, `propose()` and friends may be called while a Ready is outstanding; their effects
appear in the next Ready.
"""

from __future__ import annotations

import enum
import random
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from raft.types import (
    MAX_NODE_ID,
    NONE,
    ConfChange,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MsgType,
    ReadState,
    Ready,
    Role,
    Snapshot,
    SoftState,
)

_TRANSFER = b"transfer"  # vote-request context of a TIMEOUT_NOW campaign: bypasses the leader lease


class NotLeader(Exception):
    """Raised by leader-only operations on a node that is not (or is about to stop being) the leader."""

    def __init__(self, leader: int) -> None:
        super().__init__(f"not the leader; leader hint: {leader or 'unknown'}")
        self.leader = leader


@dataclass(slots=True)
class Config:
    id: int
    peers: tuple[int, ...]  # all voters including self, 1-based ids
    election_tick: int = 15  # election timeout is random in [election_tick, 2*election_tick) ticks
    heartbeat_tick: int = 5
    pre_vote: bool = True
    check_quorum: bool = True
    commit_quorum: str = "majority"  # "all": commit only once every voter stored the entry
    max_entries_per_msg: int = 1024
    max_inflight_msgs: int = 256
    max_learner_lag: int = 10  # a learner is promoted only once its match index is this close to the commit
    seed: int = 0  # seeds this node's own random.Random (election timeouts)

    def __post_init__(self) -> None:
        if self.commit_quorum not in ("majority", "all"):
            raise ValueError(f"commit_quorum must be 'majority' or 'all', not {self.commit_quorum!r}")
        if self.heartbeat_tick < 1 or self.election_tick <= self.heartbeat_tick:
            raise ValueError("need 1 <= heartbeat_tick < election_tick")


class _PrState(enum.Enum):
    PROBE = "probe"  # one append at a time until the follower's match index is found
    REPLICATE = "replicate"  # optimistic pipelining, bounded by the inflight window
    SNAPSHOT = "snapshot"  # a snapshot is on its way; nothing else is sent


class _Progress:
    """The leader's view of one follower (etcd's tracker.Progress)."""

    __slots__ = ("inflights", "match", "next", "pending_snapshot", "probe_sent", "recent_active",
                 "removal_told", "removed_at", "snapshot_elapsed", "state")

    def __init__(self, next_index: int) -> None:
        self.match = 0
        self.next = next_index
        self.state = _PrState.PROBE
        self.probe_sent = False
        self.recent_active = False
        self.pending_snapshot = 0
        self.snapshot_elapsed = 0
        self.removed_at = 0  # index of the conf change that removed this node (0: a voter)
        self.removal_told = 0  # periodic heartbeats sent that carried a commit index covering that removal
        self.inflights: deque[int] = deque()  # last index of each unacknowledged APPEND, in order

    def become_probe(self) -> None:
        if self.state is _PrState.SNAPSHOT:
            self.next = max(self.match + 1, self.pending_snapshot + 1)
        else:
            self.next = self.match + 1
        self.state = _PrState.PROBE
        self.probe_sent = False
        self.pending_snapshot = 0
        self.inflights.clear()

    def become_replicate(self) -> None:
        self.state = _PrState.REPLICATE
        self.next = self.match + 1
        self.probe_sent = False
        self.inflights.clear()

    def become_snapshot(self, index: int) -> None:
        self.state = _PrState.SNAPSHOT
        self.pending_snapshot = index
        self.snapshot_elapsed = 0
        self.probe_sent = False
        self.inflights.clear()

    def maybe_update(self, index: int) -> bool:
        """An APPEND_RESP acknowledged `index`; False when it was stale."""
        updated = False
        if self.match < index:
            self.match = index
            updated = True
            self.probe_sent = False
        if self.next < index + 1:
            self.next = index + 1
        return updated

    def maybe_decr_to(self, rejected: int, match_hint: int) -> bool:
        """The follower rejected an APPEND at prev index `rejected`; False when the rejection is stale."""
        if self.state is _PrState.REPLICATE:
            if rejected <= self.match:
                return False
            self.next = self.match + 1
            return True
        if self.next - 1 != rejected:
            return False
        self.next = max(min(rejected, match_hint + 1), self.match + 1)
        self.probe_sent = False
        return True


class Raft:
    """One Raft peer. Every public method is deterministic given the config's seed and the call sequence."""

    def __init__(
        self,
        cfg: Config,
        *,
        hard_state: HardState = HardState(),
        snapshot: Snapshot | None = None,
        entries: Sequence[Entry] = (),
        applied: int = 0,
    ) -> None:
        self.cfg = cfg
        self.id = cfg.id
        self._rng = random.Random(cfg.seed * 1_000_003 + cfg.id)
        self._snap = snapshot
        snap_index = snapshot.index if snapshot else 0
        self._snap_index = snap_index
        self._snap_term = snapshot.term if snapshot else 0
        self._offset = snap_index + 1  # index of self._ents[0]
        self._ents: list[Entry] = [e for e in entries if e.index > snap_index]
        if self._ents and self._ents[0].index != self._offset:
            raise ValueError(f"log starts at {self._ents[0].index}, expected {self._offset}")
        self._stabled = self.last_index
        self._pending_snapshot: Snapshot | None = None  # received by InstallSnapshot, not yet handed out
        # Membership comes from the log (thesis §4.1): the snapshot's ConfState plus every CONF_CHANGE entry.
        self._conf_base = snapshot.conf if snapshot else ConfState(tuple(cfg.peers))
        self._conf_log: list[tuple[int, ConfState]] = []  # (entry index, membership after it)
        self._set_conf(self._conf_base)
        self._role = Role.FOLLOWER
        self._scan_conf(self._ents)

        self._term = hard_state.term
        self._vote = hard_state.vote
        self._commit = min(max(hard_state.commit, snap_index), self.last_index)
        self._applied = max(applied, snap_index)
        self._lead = NONE
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._randomized_timeout = cfg.election_tick
        self._votes: dict[int, bool] = {}
        self._prs: dict[int, _Progress] = {}
        self._lead_transferee = NONE
        self._msgs: list[Message] = []
        self._read_states: list[ReadState] = []
        self._reads: deque[_PendingRead] = deque()  # awaiting a heartbeat quorum, oldest first
        self._read_by_token: dict[bytes, _PendingRead] = {}  # keyed by (requester, context): see _PendingRead
        self._reads_waiting_commit: list[tuple[bytes, int]] = []  # before the leader's no-op commits
        self._read_bcast = False
        self._need_bcast = False  # proposals since the last ready(): one APPEND per follower carries them
        self._term_start = 0  # index of this leader's no-op
        self._bcast_commit = 0  # commit index carried by the last broadcast
        self._ready_out = False
        self._prev_soft = SoftState(NONE, Role.FOLLOWER)
        self._prev_hard = hard_state
        self._become_follower(self._term, NONE)

    # ---------------------------------------------------------------- read-only state

    @property
    def role(self) -> Role:
        return self._role

    @property
    def term(self) -> int:
        return self._term

    @property
    def leader(self) -> int:
        return self._lead

    @property
    def commit(self) -> int:
        return self._commit

    @property
    def applied(self) -> int:
        return self._applied

    @property
    def last_index(self) -> int:
        return self._offset + len(self._ents) - 1

    @property
    def first_index(self) -> int:
        """The first index still in the in-memory log (snapshot index + 1)."""
        return self._offset

    @property
    def voters(self) -> tuple[int, ...]:
        return self._voters

    @property
    def learners(self) -> tuple[int, ...]:
        """Non-voting members (thesis §4.2.1): replicated to, never counted in a quorum, never campaign."""
        return self._learners

    @property
    def snapshot(self) -> Snapshot | None:
        return self._snap

    def term_at(self, index: int) -> int | None:
        """Term of the entry at `index`; None when compacted away or beyond the log."""
        if index == self._offset - 1:
            return self._snap_term
        i = index - self._offset
        if i < 0 or i >= len(self._ents):
            return None
        return self._ents[i].term

    def entries(self, lo: int, hi: int) -> list[Entry]:
        """Entries with lo <= index < hi (caller checks lo >= first_index)."""
        return self._ents[lo - self._offset : hi - self._offset]

    def status(self) -> dict:
        """What `GET /raft/status` shows; a leader adds each peer's replication progress."""
        st: dict = {
            "id": self.id,
            "role": self._role.value,
            "term": self._term,
            "leader": self._lead,
            "commit": self._commit,
            "applied": self._applied,
            "last_index": self.last_index,
            "voters": list(self._voters),
            "learners": list(self._learners),
        }
        if self._role is Role.LEADER:
            st["progress"] = {
                p: {"match": pr.match, "next": pr.next, "state": pr.state.value}
                for p, pr in self._prs.items()
            }
        return st

    # ---------------------------------------------------------------- inputs

    def tick(self) -> None:
        """Advance logical time by one tick (the node calls this every 10 ms)."""
        if self._role is Role.LEADER:
            self._tick_leader()
            return
        self._election_elapsed += 1
        if self._promotable() and self._election_elapsed >= self._randomized_timeout:
            self._election_elapsed = 0
            self._hup("pre" if self.cfg.pre_vote else "elect")  # §5.2: no leader heard: campaign

    def campaign(self) -> None:
        """Start an election now (PreVote first when enabled)."""
        self._hup("pre" if self.cfg.pre_vote else "elect")

    def propose(self, data: bytes) -> int:
        """Append a normal entry; returns its index. It is committed once it shows up in committed_entries."""
        return self._propose(EntryType.NORMAL, data)

    def propose_conf_change(self, cc: ConfChange) -> int:
        """Append a single-server membership change (thesis §4.1); it takes effect as soon as it is appended.

        Raises ValueError while another change is uncommitted, before this leader committed an entry of its
        own term (the fix to the single-server change bug Ongaro described in 2015), when the change is
        invalid, or when promoting a learner that has not caught up: a voter with a short log could leave the
        cluster unable to commit until it does (thesis §4.2.1).
        """
        self._check_leader()
        if not 1 <= cc.node <= MAX_NODE_ID:  # an id the log's codec cannot hold would stop every replica for good
            raise ValueError(f"node ids are 1 to {MAX_NODE_ID}, not {cc.node}")
        if any(idx > self._commit for idx, _ in self._conf_log):
            raise ValueError("a membership change is already in progress")
        if self._commit < self._term_start:
            raise ValueError("the leader has not committed an entry of its term yet")
        conf = _apply_conf(self._conf(), cc)
        if not conf.voters:
            raise ValueError("cannot remove the last voter")
        if cc.op == "promote":
            pr = self._prs.get(cc.node)
            match = pr.match if pr is not None else 0
            if self._commit - match > self.cfg.max_learner_lag:
                raise ValueError(f"learner {cc.node} has not caught up: it has stored up to index {match}, the "
                                 f"commit index is {self._commit} (at most {self.cfg.max_learner_lag} behind "
                                 f"may be promoted); retry once it caught up")
        return self._propose(EntryType.CONF_CHANGE, cc.encode())

    def read_index(self, context: bytes) -> None:
        """Request a linearizable read (thesis §6.4): a ReadState(index, context) appears in a later Ready.

        On the leader, once a heartbeat round sent after the request confirmed it is still leader; a follower
        forwards the request to the leader. The read may be served once the state machine applied
        ReadState.index. If leadership is lost meanwhile the request is dropped: the caller times out and
        retries. `context` must be unique among this node's reads; other nodes may use the same bytes.
        """
        if self._role is Role.LEADER:
            self._leader_read(context, self.id)
        elif self._lead != NONE:
            self._send(Message(MsgType.READ_INDEX, self.id, self._lead, self._term, context=context))
        else:
            raise NotLeader(NONE)

    def transfer_leadership(self, to: int) -> None:
        """Hand leadership to `to` (thesis §3.10): catch it up, then send TIMEOUT_NOW.

        Proposals raise NotLeader until the transfer completes or is aborted after one election timeout.
        """
        self._check_leader()
        if to == self.id or to not in self._voters:
            raise ValueError(f"cannot transfer leadership to {to}")
        if self._lead_transferee == to:
            return
        self._lead_transferee = to
        self._election_elapsed = 0  # the transfer is aborted after one election timeout
        if self._prs[to].match == self.last_index:
            self._send(Message(MsgType.TIMEOUT_NOW, self.id, to, self._term))
        else:
            self._send_append(to)

    def compact(self, index: int, data: bytes) -> None:
        """Record the state machine's snapshot at applied `index` and drop the log entries up to it."""
        if index > self._applied:
            raise ValueError(f"cannot compact to {index}: only {self._applied} applied")
        if index <= self._snap_index:
            return
        term = self.term_at(index)
        assert term is not None
        self._snap = Snapshot(index, term, self._conf_at(index), data)
        self._conf_base = self._snap.conf
        self._conf_log = [c for c in self._conf_log if c[0] > index]
        del self._ents[: index - self._offset + 1]
        self._offset = index + 1
        self._snap_index = index
        self._snap_term = term
        self._stabled = max(self._stabled, index)

    def step(self, m: Message) -> None:
        """Process one message from a peer; stale, duplicated and unknown messages are ignored safely."""
        if m.term > self._term:
            if m.type in (MsgType.VOTE, MsgType.PRE_VOTE):
                in_lease = (
                    self.cfg.check_quorum
                    and self._lead != NONE
                    and self._election_elapsed < self.cfg.election_tick
                )
                if in_lease and m.context != _TRANSFER:
                    return  # thesis §4.2.3: a node that hears from a leader ignores disruptive vote requests
            if m.type is MsgType.PRE_VOTE:
                pass  # a pre-vote never changes our term (thesis §9.6)
            elif m.type is MsgType.PRE_VOTE_RESP and not m.reject:
                pass  # granted pre-votes carry the term we will campaign in
            elif m.type in (MsgType.APPEND, MsgType.HEARTBEAT, MsgType.SNAPSHOT):
                self._become_follower(m.term, m.frm)
            else:
                self._become_follower(m.term, NONE)
        elif m.term < self._term:
            if m.type in (MsgType.APPEND, MsgType.HEARTBEAT):
                # §5.1: every reply carries the current term, so a stale leader learns it and steps down.
                self._send(Message(MsgType.APPEND_RESP, self.id, m.frm, self._term))
            elif m.type is MsgType.PRE_VOTE:
                self._send(Message(MsgType.PRE_VOTE_RESP, self.id, m.frm, self._term, reject=True))
            return

        t = m.type
        if t is MsgType.VOTE or t is MsgType.PRE_VOTE:
            self._handle_vote_request(m)
        elif self._role is Role.LEADER:
            self._step_leader(m)
        elif self._role is Role.FOLLOWER:
            self._step_follower(m)
        else:
            self._step_candidate(m)

    # ---------------------------------------------------------------- Ready / advance

    def has_ready(self) -> bool:
        """True when ready() would hand out work (and no Ready is outstanding)."""
        if self._ready_out:
            return False
        return bool(
            self._msgs
            or self._read_states
            or self._need_bcast
            or self._read_bcast
            or self._pending_snapshot is not None
            or self.last_index > self._stabled
            or self._commit > self._applied
            or self._lead != self._prev_soft.leader
            or self._role is not self._prev_soft.role
            or self._term != self._prev_hard.term
            or self._vote != self._prev_hard.vote
        )

    def ready(self) -> Ready:
        """The next batch of work; see the module docstring for the order the caller must follow."""
        if self._ready_out:
            raise RuntimeError("ready() called again before advance()")
        if self._role is Role.LEADER:
            if self._need_bcast:
                self._bcast_append()
            if self._read_bcast:
                self._bcast_heartbeat(self._read_round_context())
        self._need_bcast = False
        self._read_bcast = False
        rd = Ready()
        soft = self._soft()
        if soft != self._prev_soft:
            rd.soft_state = soft
            self._prev_soft = soft
        hard = self._hard()
        if hard != self._prev_hard:
            rd.hard_state = hard
        if self._pending_snapshot is not None:
            rd.snapshot = self._pending_snapshot
        if self.last_index > self._stabled:
            rd.entries = self._ents[self._stabled + 1 - self._offset :]
        lo = max(self._applied, self._snap_index if rd.snapshot else 0) + 1
        if self._commit >= lo:
            rd.committed_entries = self._ents[lo - self._offset : self._commit + 1 - self._offset]
        rd.messages, self._msgs = self._msgs, []
        rd.read_states, self._read_states = self._read_states, []
        rd.must_sync = bool(rd.entries) or rd.snapshot is not None or (
            rd.hard_state is not None
            and (rd.hard_state.term != self._prev_hard.term or rd.hard_state.vote != self._prev_hard.vote)
        )
        self._ready_out = True
        return rd

    def advance(self, rd: Ready) -> None:
        """The caller persisted, sent and applied everything in `rd`."""
        self._ready_out = False
        if rd.hard_state is not None:
            self._prev_hard = rd.hard_state
        if rd.snapshot is not None:
            if self._pending_snapshot is rd.snapshot:
                self._pending_snapshot = None
            self._applied = max(self._applied, rd.snapshot.index)
            self._stabled = max(self._stabled, rd.snapshot.index)
        if rd.entries:
            # A step between ready() and advance() may have overwritten a suffix of these entries: only the
            # prefix still in the log counts as stable (one matching entry vouches for all before it, §5.3).
            for e in reversed(rd.entries):
                if self.term_at(e.index) == e.term:
                    self._stabled = max(self._stabled, e.index)
                    break
            me = self._prs.get(self.id) if self._role is Role.LEADER else None
            if me is not None and me.maybe_update(self._stabled) and self._maybe_commit():
                self._need_bcast = True
        if rd.committed_entries:
            self._applied = max(self._applied, rd.committed_entries[-1].index)
        removed = self.id not in self._voters
        if self._role is Role.LEADER and removed and self._commit >= self._last_conf_index():
            self._become_follower(self._term, NONE)  # thesis §4.2.2: a removed leader steps down at commit

    # ---------------------------------------------------------------- internals: roles

    def _soft(self) -> SoftState:
        return SoftState(self._lead, self._role)

    def _hard(self) -> HardState:
        """The hard state to persist. Its commit index only covers entries already durable before this
        Ready (not ones it is about to write or overwrite, nor a snapshot not yet installed), so no write
        order inside the storage can leave a durable commit index pointing at entries that never landed."""
        prev = self._prev_hard.commit
        commit = prev if self._pending_snapshot is not None else max(prev, min(self._commit, self._stabled))
        return HardState(self._term, self._vote, commit)

    def _promotable(self) -> bool:
        """May this node start an election? A voter may; so may a voter whose own removal is still
        uncommitted (thesis §4.2.2: it can lead the cluster through the change, counting only the new
        voters), or a cluster whose last leader removed itself could be left with no one able to finish.
        A learner never may, not even a pre-vote (thesis §4.2.1: non-voting members)."""
        if self._pending_snapshot is not None:
            return False
        if self.id in self._voters:
            return True
        before = self._conf_before_pending()
        return before is not None and self.id in before.voters

    def _reset(self, term: int) -> None:
        if term != self._term:
            self._term = term
            self._vote = NONE
        self._lead = NONE
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._randomized_timeout = self.cfg.election_tick + self._rng.randrange(self.cfg.election_tick)
        self._votes = {}
        self._prs = {}
        self._lead_transferee = NONE
        self._reads.clear()
        self._read_by_token.clear()
        self._reads_waiting_commit.clear()
        self._read_bcast = False
        self._need_bcast = False

    def _become_follower(self, term: int, lead: int) -> None:
        self._reset(term)
        self._role = Role.FOLLOWER
        self._lead = lead

    def _become_pre_candidate(self) -> None:
        # Does not touch term or vote: a failed pre-vote leaves no trace (thesis §9.6).
        self._votes = {}
        self._prs = {}
        self._lead = NONE
        self._role = Role.PRE_CANDIDATE

    def _become_candidate(self) -> None:
        self._reset(self._term + 1)
        self._vote = self.id
        self._role = Role.CANDIDATE

    def _become_leader(self) -> None:
        self._reset(self._term)
        self._role = Role.LEADER
        self._lead = self.id
        nxt = self.last_index + 1
        for p in (*self._voters, *self._learners):  # learners are replicated to like followers (§4.2.1)
            self._prs[p] = _Progress(nxt)
        for p in self._pending_removals():
            self._prs[p] = _Progress(nxt)
            self._prs[p].removed_at = self._last_conf_index()
        self._append([Entry(self._term, nxt, EntryType.NOOP)])  # §5.4.2: commits earlier terms' entries
        self._term_start = nxt
        me = self._prs.get(self.id)
        if me is not None:
            # The leader counts toward a quorum only what it has persisted itself (advance() moves it), so a
            # caller may send APPENDs while its own fsync runs (thesis §10.2.1).
            me.maybe_update(self._stabled)
            me.become_replicate()
            me.recent_active = True
        self._bcast_commit = 0
        self._need_bcast = True

    def _hup(self, kind: str) -> None:
        """kind: "pre" (PreVote round), "elect" (election) or "transfer" (TIMEOUT_NOW: ignore the lease)."""
        if self._role is Role.LEADER or not self._promotable():
            return
        transfer = kind == "transfer"
        if kind == "pre":
            self._become_pre_candidate()
            vote_type, term = MsgType.PRE_VOTE, self._term + 1
        else:
            self._become_candidate()
            vote_type, term = MsgType.VOTE, self._term
        if self._poll(self.id, True) == "won":
            self._won_poll()
            return
        ctx = _TRANSFER if transfer else b""
        lt = self.term_at(self.last_index) or 0
        li = self.last_index
        for p in self._voters:
            if p != self.id:
                self._send(Message(vote_type, self.id, p, term, log_term=lt, index=li, context=ctx))

    def _poll(self, frm: int, granted: bool) -> str:
        self._votes.setdefault(frm, granted)
        yes = sum(1 for p in self._voters if self._votes.get(p) is True)
        no = sum(1 for p in self._voters if self._votes.get(p) is False)
        q = len(self._voters) // 2 + 1
        if yes >= q:
            return "won"
        if no > len(self._voters) - q:
            return "lost"
        return "pending"

    def _won_poll(self) -> None:
        if self._role is Role.PRE_CANDIDATE:
            self._hup("elect")  # the pre-vote succeeded: now the real election
        else:
            self._become_leader()

    def _handle_vote_request(self, m: Message) -> None:
        pre = m.type is MsgType.PRE_VOTE
        resp = MsgType.PRE_VOTE_RESP if pre else MsgType.VOTE_RESP
        can_vote = (
            self._vote == m.frm
            or (self._vote == NONE and self._lead == NONE)
            or (pre and m.term > self._term)
        )
        if can_vote and self._is_up_to_date(m.log_term, m.index):
            # §5.4.1: grant only to a candidate whose log is at least as up-to-date as ours.
            self._send(Message(resp, self.id, m.frm, m.term))
            if not pre:
                self._election_elapsed = 0
                self._vote = m.frm
        else:
            self._send(Message(resp, self.id, m.frm, self._term, reject=True))

    def _is_up_to_date(self, log_term: int, index: int) -> bool:
        my_term = self.term_at(self.last_index) or 0
        return log_term > my_term or (log_term == my_term and index >= self.last_index)

    def _step_candidate(self, m: Message) -> None:
        t = m.type
        if t is MsgType.APPEND or t is MsgType.HEARTBEAT or t is MsgType.SNAPSHOT:
            self._become_follower(m.term, m.frm)  # §5.2: a leader of our term exists
            self._step_follower(m)
        elif (t is MsgType.PRE_VOTE_RESP and self._role is Role.PRE_CANDIDATE) or (
            t is MsgType.VOTE_RESP and self._role is Role.CANDIDATE
        ):
            res = self._poll(m.frm, not m.reject)
            if res == "won":
                self._won_poll()
            elif res == "lost":
                self._become_follower(self._term, NONE)

    def _step_follower(self, m: Message) -> None:
        t = m.type
        if t is MsgType.APPEND:
            self._election_elapsed = 0
            self._lead = m.frm
            self._handle_append(m)
        elif t is MsgType.HEARTBEAT:
            self._election_elapsed = 0
            self._lead = m.frm
            self._commit_to(min(m.commit, self.last_index))
            self._send(Message(MsgType.HEARTBEAT_RESP, self.id, m.frm, self._term, context=m.context))
        elif t is MsgType.SNAPSHOT:
            self._election_elapsed = 0
            self._lead = m.frm
            self._handle_snapshot(m)
        elif t is MsgType.TIMEOUT_NOW:
            self._hup("transfer")
        elif t is MsgType.READ_INDEX:
            if self._lead != NONE:
                self._send(Message(MsgType.READ_INDEX, m.frm, self._lead, self._term, context=m.context))
        elif t is MsgType.READ_INDEX_RESP:
            self._read_states.append(ReadState(m.index, m.context))

    # ---------------------------------------------------------------- internals: follower log

    def _handle_append(self, m: Message) -> None:
        if m.index < self._commit:
            self._send(Message(MsgType.APPEND_RESP, self.id, m.frm, self._term, index=self._commit))
            return
        if self.term_at(m.index) == m.log_term:  # §5.3 consistency check
            ents = m.entries
            last_new = m.index + len(ents)
            if ents:
                conflict = self._find_conflict(ents)
                if conflict:
                    if conflict <= self._commit:
                        raise AssertionError(f"entry {conflict} conflicts with committed entry")
                    self._append(ents[conflict - ents[0].index :])
            self._commit_to(min(m.commit, last_new))
            self._send(Message(MsgType.APPEND_RESP, self.id, m.frm, self._term, index=last_new))
            return
        # Fast backtracking: point the leader at the last index whose term is <= the leader's prev term.
        hint, hint_term = self._find_conflict_by_term(min(m.index, self.last_index), m.log_term)
        self._send(Message(MsgType.APPEND_RESP, self.id, m.frm, self._term, index=m.index, reject=True,
                           reject_hint=hint, log_term=hint_term))

    def _find_conflict(self, ents: tuple[Entry, ...] | list[Entry]) -> int:
        """Index of the first entry that is new or conflicts with ours; 0 when all are already present."""
        last = self.last_index
        for e in ents:
            if e.index > last:
                return e.index
            if self.term_at(e.index) != e.term:
                return e.index
        return 0

    def _find_conflict_by_term(self, index: int, term: int) -> tuple[int, int]:
        while index > self._snap_index:
            t = self.term_at(index)
            if t is None or t <= term:
                break
            index -= 1
        return index, self.term_at(index) or 0

    def _handle_snapshot(self, m: Message) -> None:
        s = m.snapshot
        assert s is not None
        if self._restore(s):
            self._send(Message(MsgType.APPEND_RESP, self.id, m.frm, self._term, index=self.last_index))
        else:
            self._send(Message(MsgType.APPEND_RESP, self.id, m.frm, self._term, index=self._commit))

    def _restore(self, s: Snapshot) -> bool:
        if s.index <= self._commit:
            return False
        if self.term_at(s.index) == s.term:
            self._commit_to(s.index)  # we already have the log up to the snapshot: just fast-forward
            return False
        self._snap = s
        self._snap_index = s.index
        self._snap_term = s.term
        self._offset = s.index + 1
        self._ents = []
        self._stabled = s.index
        self._commit = s.index
        self._pending_snapshot = s
        self._conf_base = s.conf
        self._conf_log = []
        self._set_conf(self._conf_base)
        return True

    def _commit_to(self, index: int) -> None:
        if index > self._commit:
            self._commit = index

    def _append(self, ents: Sequence[Entry]) -> None:
        """Append entries, truncating any conflicting suffix starting at ents[0].index."""
        first = ents[0].index
        if first <= self.last_index:
            del self._ents[first - self._offset :]
            self._stabled = min(self._stabled, first - 1)
            if self._conf_log and self._conf_log[-1][0] >= first:
                self._conf_log = [c for c in self._conf_log if c[0] < first]
                self._set_conf(self._conf_log[-1][1] if self._conf_log else self._conf_base)
        self._ents.extend(ents)
        self._scan_conf(ents)

    def _scan_conf(self, ents: Sequence[Entry]) -> None:
        for e in ents:
            if e.type is EntryType.CONF_CHANGE:
                self._apply_conf_entry(e)

    def _apply_conf_entry(self, e: Entry) -> None:
        conf = _apply_conf(self._conf(), ConfChange.decode(e.data), strict=False)
        self._conf_log.append((e.index, conf))
        self._set_conf(conf)
        if self._role is Role.LEADER:
            members = conf.members
            for p in members:
                if p not in self._prs:
                    pr = self._prs[p] = _Progress(self.last_index + 1)
                    pr.recent_active = True  # give a new member one election timeout to answer
                self._prs[p].removed_at = self._prs[p].removal_told = 0
            for p, pr in self._prs.items():
                if p not in members and p != self.id and not pr.removed_at:
                    pr.removed_at = e.index
            if self._lead_transferee not in (NONE, *conf.voters):
                self._lead_transferee = NONE

    def _conf(self) -> ConfState:
        return ConfState(self._voters, self._learners)

    def _set_conf(self, conf: ConfState) -> None:
        self._voters = conf.voters
        self._learners = conf.learners

    def _conf_at(self, index: int) -> ConfState:
        conf = self._conf_base
        for idx, c in self._conf_log:
            if idx > index:
                break
            conf = c
        return conf

    def _conf_before_pending(self) -> ConfState | None:
        """The membership before the last conf change when that change is not committed yet, else None."""
        if not self._conf_log or self._conf_log[-1][0] <= self._commit:
            return None
        return self._conf_log[-2][1] if len(self._conf_log) > 1 else self._conf_base

    def _pending_removals(self) -> tuple[int, ...]:
        """Members removed by a not yet committed conf change: still replicated to, not counted in quorums."""
        before = self._conf_before_pending()
        if before is None:
            return ()
        members = (*self._voters, *self._learners)
        return tuple(p for p in before.members if p not in members)

    def _last_conf_index(self) -> int:
        return self._conf_log[-1][0] if self._conf_log else 0

    # ---------------------------------------------------------------- internals: leader

    def _check_leader(self) -> None:
        if self._role is not Role.LEADER:
            raise NotLeader(self._lead)
        if self._lead_transferee != NONE:
            raise NotLeader(self._lead_transferee)

    def _propose(self, typ: EntryType, data: bytes) -> int:
        self._check_leader()
        idx = self.last_index + 1
        self._append([Entry(self._term, idx, typ, data)])
        if self.id not in self._voters:
            self._maybe_commit()  # a removed leader finishing its term counts only the others
        self._need_bcast = True
        return idx

    def _tick_leader(self) -> None:
        self._heartbeat_elapsed += 1
        self._election_elapsed += 1
        if self._election_elapsed >= self.cfg.election_tick:
            self._election_elapsed = 0
            if self.cfg.check_quorum:
                active = sum(1 for p in self._voters if p == self.id or self._prs[p].recent_active)
                for p, pr in self._prs.items():
                    pr.recent_active = p == self.id
                if active < len(self._voters) // 2 + 1:
                    self._become_follower(self._term, NONE)  # §6.2 of the thesis: CheckQuorum
                    return
            self._lead_transferee = NONE  # a transfer that did not finish in one election timeout is aborted
        for pr in self._prs.values():
            if pr.state is _PrState.SNAPSHOT:
                pr.snapshot_elapsed += 1
                if pr.snapshot_elapsed >= self.cfg.election_tick:
                    pr.pending_snapshot = 0
                    pr.become_probe()  # the snapshot was probably lost: probe again (which resends it)
        if self._heartbeat_elapsed >= self.cfg.heartbeat_tick:
            self._heartbeat_elapsed = 0
            self._bcast_heartbeat(self._read_round_context())
            self._count_removal_told()

    def _step_leader(self, m: Message) -> None:
        t = m.type
        if t is MsgType.APPEND_RESP:
            self._on_append_resp(m)
        elif t is MsgType.HEARTBEAT_RESP:
            pr = self._prs.get(m.frm)
            if pr is None:
                return
            pr.recent_active = True
            pr.probe_sent = False
            if pr.removal_told >= 3:
                # A removed node is replicated to until it surely knows its removal committed: otherwise it
                # would take its removal for pending and campaign (see _promotable).
                del self._prs[m.frm]
                return
            if pr.state is _PrState.REPLICATE and len(pr.inflights) >= self.cfg.max_inflight_msgs:
                pr.inflights.popleft()
            if pr.match < self.last_index:
                self._send_append(m.frm)
            if m.context and self._reads:
                self._on_read_ack(m.frm, m.context)
        elif t is MsgType.READ_INDEX:
            self._leader_read(m.context, m.frm)

    def _on_append_resp(self, m: Message) -> None:
        pr = self._prs.get(m.frm)
        if pr is None:
            return
        pr.recent_active = True
        if m.reject:
            hint = m.reject_hint
            if m.log_term > 0:
                hint, _ = self._find_conflict_by_term(hint, m.log_term)
            if pr.maybe_decr_to(m.index, hint):
                if pr.state is _PrState.REPLICATE:
                    pr.become_probe()
                self._send_append(m.frm)
            return
        was_paused = self._paused(pr)
        if not pr.maybe_update(m.index):
            return
        if pr.state is _PrState.PROBE:
            pr.become_replicate()
        elif pr.state is _PrState.SNAPSHOT and pr.match >= pr.pending_snapshot:
            pr.become_probe()
            pr.become_replicate()
        elif pr.state is _PrState.REPLICATE:
            infl = pr.inflights
            while infl and infl[0] <= m.index:
                infl.popleft()
        # Sends are deferred to ready(): acks arriving together become one APPEND per follower.
        if self._maybe_commit() or was_paused or pr.next <= self.last_index:
            self._need_bcast = True
        if m.frm == self._lead_transferee and pr.match == self.last_index:
            self._send(Message(MsgType.TIMEOUT_NOW, self.id, m.frm, self._term))

    def _maybe_commit(self) -> bool:
        # Only voters count: a learner's ack never commits anything (thesis §4.2.1, non-voting members).
        matches = sorted((self._prs[p].match for p in self._voters), reverse=True)
        if self.cfg.commit_quorum == "all":
            idx = matches[-1]
        else:
            idx = matches[len(matches) // 2]
        # §5.4.2 / Figure 8: only an entry of the current term is committed by counting replicas.
        if idx > self._commit and self.term_at(idx) == self._term:
            self._commit = idx
            if self._reads_waiting_commit and self._commit >= self._term_start:
                waiting, self._reads_waiting_commit = self._reads_waiting_commit, []
                for ctx, frm in waiting:
                    self._leader_read(ctx, frm)
            return True
        return False

    def _paused(self, pr: _Progress) -> bool:
        if pr.state is _PrState.PROBE:
            return pr.probe_sent
        if pr.state is _PrState.REPLICATE:
            return len(pr.inflights) >= self.cfg.max_inflight_msgs
        return True

    def _bcast_append(self) -> None:
        """Send every follower what it lacks, batched up to max_entries_per_msg per APPEND; an empty APPEND
        only when the commit index moved since the last broadcast (heartbeats carry it otherwise)."""
        commit_moved = self._commit > self._bcast_commit
        self._bcast_commit = self._commit
        for p, pr in self._prs.items():
            if p == self.id:
                continue
            if pr.state is _PrState.REPLICATE:
                sent = False
                while pr.next <= self.last_index and self._send_append(p, False):
                    sent = True
                if not sent and commit_moved:
                    self._send_append(p)
            else:
                self._send_append(p)

    def _send_append(self, to: int, send_if_empty: bool = True) -> bool:
        """Send the next APPEND (or a SNAPSHOT if its entries were compacted); False if nothing was sent."""
        pr = self._prs[to]
        if self._paused(pr):
            return False
        prev = pr.next - 1
        prev_term = self.term_at(prev)
        if prev_term is None or pr.next < self._offset:
            if self._snap is None:
                return False
            pr.become_snapshot(self._snap.index)
            self._send(Message(MsgType.SNAPSHOT, self.id, to, self._term, snapshot=self._snap))
            return True
        hi = min(self.last_index + 1, pr.next + self.cfg.max_entries_per_msg)
        ents = tuple(self._ents[pr.next - self._offset : hi - self._offset])
        if not ents and not send_if_empty:
            return False
        self._send(Message(MsgType.APPEND, self.id, to, self._term, log_term=prev_term, index=prev,
                           entries=ents, commit=self._commit))
        if pr.state is _PrState.REPLICATE:
            if ents:
                pr.next = ents[-1].index + 1
                pr.inflights.append(ents[-1].index)
        else:
            pr.probe_sent = True
        return True

    def _bcast_heartbeat(self, context: bytes) -> None:
        """One heartbeat to every other peer; `context` (echoed in the replies) names a ReadIndex round."""
        for p, pr in self._prs.items():
            if p != self.id:
                self._send(Message(MsgType.HEARTBEAT, self.id, p, self._term, commit=self._heartbeat_commit(pr),
                                   context=context))

    def _heartbeat_commit(self, pr: _Progress) -> int:
        # A follower may hold unmatched entries past pr.match: tell it no commit index beyond what it matches.
        return min(pr.match, self._commit)

    def _count_removal_told(self) -> None:
        """Count the periodic heartbeat just sent toward telling each removed node its removal committed.

        Only periodic heartbeats count: they are spaced heartbeat_tick apart, so several of them outlast a
        brief loss, whereas ReadIndex rounds can go out many per tick and all be lost together. A removed node
        forgotten before it learns its removal committed would campaign forever (thesis §4.2.3).
        """
        for pr in self._prs.values():
            if pr.removed_at and self._heartbeat_commit(pr) >= pr.removed_at:
                pr.removal_told += 1

    def _read_round_context(self) -> bytes:
        """A heartbeat's context: the token of the newest pending read, so acks confirm it and all before it."""
        return self._reads[-1].token if self._reads else b""

    def _leader_read(self, context: bytes, frm: int) -> None:
        if self._commit < self._term_start:
            # The leader's commit index is only known to be current once its no-op commits (thesis §6.4).
            self._reads_waiting_commit.append((context, frm))
            return
        if len(self._voters) == 1 and self.id in self._voters:
            self._answer_read(_PendingRead(context, frm, self._commit))
            return
        r = _PendingRead(context, frm, self._commit)
        self._reads.append(r)
        self._read_by_token[r.token] = r
        self._read_bcast = True

    def _on_read_ack(self, frm: int, token: bytes) -> None:
        """`frm` acknowledged a heartbeat sent after the read named `token` was registered (thesis §6.4)."""
        target = self._read_by_token.get(token)
        if target is None:
            return
        target.acks.add(frm)
        if len([p for p in self._voters if p == self.id or p in target.acks]) < len(self._voters) // 2 + 1:
            return
        # Confirming leadership for this read confirms it for every earlier one too.
        while self._reads:
            r = self._reads.popleft()
            if self._read_by_token.get(r.token) is r:  # a duplicated READ_INDEX registers a token twice
                del self._read_by_token[r.token]
            self._answer_read(r)
            if r is target:
                break

    def _answer_read(self, r: _PendingRead) -> None:
        if r.frm == self.id:
            self._read_states.append(ReadState(r.index, r.context))
        else:
            self._send(Message(MsgType.READ_INDEX_RESP, self.id, r.frm, self._term, index=r.index,
                               context=r.context))

    def _send(self, m: Message) -> None:
        self._msgs.append(m)


class _PendingRead:
    """A ReadIndex request from node `frm` at read index `index`, awaiting a heartbeat quorum (thesis §6.4).

    Every node numbers its own contexts, so only (frm, context) names a read: `token`, an encoding of that pair
    that distinct pairs never share, keys it on the leader and is the context of the heartbeats sent for it.
    """

    __slots__ = ("acks", "context", "frm", "index", "token")

    def __init__(self, context: bytes, frm: int, index: int) -> None:
        self.context = context
        self.frm = frm
        self.index = index
        self.token = b"%d:%s" % (frm, context)  # ids are digits only: the first colon ends the id
        self.acks: set[int] = set()


def _apply_conf(conf: ConfState, cc: ConfChange, strict: bool = True) -> ConfState:
    """Membership after `cc`; strict (a new proposal) rejects changes that change nothing or make no sense,
    replaying the log tolerates them (a node may have started knowing a change already)."""
    voters, learners, n = conf.voters, conf.learners, cc.node
    if cc.op in ("add", "promote"):
        if strict and cc.op == "promote" and n not in learners:
            what = "it is already a voter" if n in voters else "add it with add-learner first"
            raise ValueError(f"node {n} is not a learner, only a learner can be promoted ({what})")
        if n in voters:
            if strict:
                raise ValueError(f"node {n} is already a voter")
            return conf
        if strict and cc.op == "add" and n in learners:
            raise ValueError(f"node {n} is a learner: promote it instead")
        return ConfState((*voters, n), tuple(p for p in learners if p != n))
    if cc.op == "add-learner":
        if n in voters or n in learners:
            if strict:
                raise ValueError(f"node {n} is already a {'voter' if n in voters else 'learner'}")
            return conf
        return ConfState(voters, (*learners, n))
    if n not in voters and n not in learners:
        if strict:
            raise ValueError(f"node {n} is not a voter or a learner")
        return conf
    return ConfState(tuple(p for p in voters if p != n), tuple(p for p in learners if p != n))
