"""What crosses the boundary of the Raft core: entries to persist, messages to send, state to apply.

The core (`raft/core.py`) consumes `Message`s and ticks and hands out `Ready` batches; storage,
transport and the state machine live outside it and only ever see these types.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

NONE = 0  # node ids are 1-based; 0 means "nobody" (no vote, no known leader)


class Role(enum.Enum):
    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre-candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


class EntryType(enum.IntEnum):
    NORMAL = 0
    NOOP = 1  # appended by every new leader so it can commit entries of earlier terms (Raft §5.4.2)
    CONF_CHANGE = 2  # data = ConfChange.encode(): single-server membership change (Raft §4.1)


class MsgType(enum.IntEnum):
    VOTE = 1
    VOTE_RESP = 2
    PRE_VOTE = 3
    PRE_VOTE_RESP = 4
    APPEND = 5
    APPEND_RESP = 6
    HEARTBEAT = 7
    HEARTBEAT_RESP = 8
    SNAPSHOT = 9  # InstallSnapshot; the reply is an APPEND_RESP at the snapshot index
    TIMEOUT_NOW = 10  # leadership transfer: start an election now, ignoring the lease
    READ_INDEX = 11  # follower asks the leader for a read index on behalf of a client
    READ_INDEX_RESP = 12


@dataclass(slots=True, frozen=True)
class Entry:
    term: int
    index: int
    type: EntryType = EntryType.NORMAL
    data: bytes = b""


@dataclass(slots=True, frozen=True)
class HardState:
    """Must be durable before any message produced in the same Ready is sent."""

    term: int = 0
    vote: int = NONE
    commit: int = 0


@dataclass(slots=True, frozen=True)
class ConfState:
    """The membership: voters count in every quorum; learners (thesis §4.2.1 "non-voting members") only
    receive the log. The two are disjoint."""

    voters: tuple[int, ...]
    learners: tuple[int, ...] = ()

    @property
    def members(self) -> tuple[int, ...]:
        return (*self.voters, *self.learners)


# "add-learner" then "promote" is the safe way to grow a cluster (thesis §4.2.1): the new server catches up
# without counting toward any quorum. "add" makes a voter at once, as before.
CONF_CHANGE_OPS = ("add", "add-learner", "promote", "remove")


MAX_NODE_ID = 65_535  # a node id names ports (raft/node.py, NodeConfig): no id beyond a port number


@dataclass(slots=True, frozen=True)
class ConfChange:
    op: str  # one of CONF_CHANGE_OPS
    node: int  # 1 to MAX_NODE_ID

    def encode(self) -> bytes:
        return f"{self.op}:{self.node}".encode()

    @classmethod
    def decode(cls, data: bytes) -> ConfChange:
        op, _, node = data.decode().partition(":")
        if op not in CONF_CHANGE_OPS:
            raise ValueError(f"unknown conf change op {op!r}")
        return cls(op, int(node))


@dataclass(slots=True, frozen=True)
class Snapshot:
    index: int
    term: int
    conf: ConfState
    data: bytes = b""


@dataclass(slots=True)
class Message:
    type: MsgType
    frm: int
    to: int
    term: int
    log_term: int = 0
    index: int = 0
    entries: tuple[Entry, ...] = ()
    commit: int = 0
    reject: bool = False
    reject_hint: int = 0
    snapshot: Snapshot | None = None
    context: bytes = b""


@dataclass(slots=True, frozen=True)
class ReadState:
    """A linearizable read with this `context` may be served once the state machine applied `index`."""

    index: int
    context: bytes


@dataclass(slots=True, frozen=True)
class SoftState:
    leader: int
    role: Role


@dataclass(slots=True)
class Ready:
    """One batch of work for the caller, in this order: persist hard_state, snapshot and entries
    (fsync when must_sync), then send messages, then apply snapshot and committed_entries, then advance()."""

    soft_state: SoftState | None = None
    hard_state: HardState | None = None
    entries: list[Entry] = field(default_factory=list)
    snapshot: Snapshot | None = None
    committed_entries: list[Entry] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    read_states: list[ReadState] = field(default_factory=list)
    must_sync: bool = False
