"""The replicated key-value state machine: put, delete, compare-and-set, and exactly-once client sessions.

Every replica applies the same committed commands in the same order, so every replica holds the same
map. Values are stored as canonical JSON text (sorted keys, no spaces) so that compare-and-set
compares JSON values, not spellings, and a read can be served without re-encoding.

Exactly-once (Raft thesis §6.3): a client first commits a REGISTER command; the session id is the
number of registrations applied before it plus one, so every replica hands out the same ids, and never
the same id twice. Its commands then carry (session, seq); the session remembers the last seq applied
and its outcome, and a retry of that seq returns the remembered outcome instead of applying twice. A
command on a session this machine does not hold (never registered, or expired) is refused with
SESSION_EXPIRED and has no effect: never a second application.

Log time: the leader stamps every command with its wall clock and the session timeout when it proposes
it. Applying a command moves the log clock to max(log clock, stamp), never back, then expires every
session idle for longer than the stamped timeout. Whether a session is alive therefore depends only on
the log, never on a replica's own clock, and a snapshot carries the sessions, their last activity and
the log clock, so a restored replica decides the same. Past `max_sessions` live sessions, registering
one more expires the least recently active: also a pure function of the log, and safe, since the
expired session's requests are refused. A leader clock far ahead expires sessions early (their clients
get "session expired"); one behind delays expiry; neither can make a command apply twice.
"""

from __future__ import annotations

import enum
import json
import math
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, NamedTuple

import msgpack

DEFAULT_SESSION_TIMEOUT = 3600.0  # seconds of log time a session may stay idle


class Op(enum.IntEnum):
    PUT = 1
    DELETE = 2
    CAS = 3
    REGISTER = 4  # open a client session (RegisterClient in the Raft thesis)


_OPS = frozenset(int(op) for op in Op)


class Outcome(enum.IntEnum):
    """What applying a command did; the HTTP layer maps it to a status code."""

    OK = 0  # put done / cas swapped / delete removed a key
    NOT_FOUND = 1  # delete of an absent key
    CONFLICT = 2  # cas: current value differs from expected
    STALE_SEQUENCE = 3  # a seq older than the session's last one: its result is no longer known
    MALFORMED = 4  # not a valid command: ignored, identically on every replica
    SESSION_EXPIRED = 5  # the session is unknown or expired: refused, not applied


class Registered(NamedTuple):
    """The result of a REGISTER command: the new session's id."""

    session: int


class Session(NamedTuple):
    last_seq: int  # 0 right after registration
    outcome: int  # the Outcome of last_seq
    last_active: float  # log time of the session's last command


def canonical_json(value: Any) -> str:
    """The one spelling of a JSON value this store keeps and compares."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def encode_command(op: Op, key: str, value: str | None = None, expected: str | None = None, session: int = 0,
                   seq: int = 0, *, now: float, session_timeout: float = DEFAULT_SESSION_TIMEOUT) -> bytes:
    """A command as it is stored in the Raft log (value and expected are canonical JSON text). `now` and
    `session_timeout` are the proposing leader's stamp; session 0 means no session (no deduplication)."""
    return msgpack.packb([int(op), key, value, expected, session, seq, now, session_timeout], use_bin_type=True)


def encode_register(*, now: float, session_timeout: float = DEFAULT_SESSION_TIMEOUT) -> bytes:
    """The command that opens a session; applying it returns `Registered(id)`."""
    return encode_command(Op.REGISTER, "", now=now, session_timeout=session_timeout)


def _is_time(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _is_count(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


class KVStateMachine:
    """In-memory map rebuilt on restart from the newest snapshot plus the committed log."""

    def __init__(self, max_sessions: int = 100_000) -> None:
        self.data: dict[str, str] = {}
        self.sessions: OrderedDict[int, Session] = OrderedDict()  # least recently active first
        self.registered = 0  # sessions ever registered: the last id handed out
        self.clock = 0.0  # log time: the largest leader stamp applied so far
        self.max_sessions = max_sessions

    def apply(self, command: bytes) -> Outcome | Registered:
        """Apply one committed command (deterministic: same commands, same order, same state)."""
        try:
            fields = msgpack.unpackb(command, raw=False)
        except (ValueError, TypeError, msgpack.UnpackException):
            fields = None
        # [op, key, value, expected, client, seq] is what a build before log-time sessions wrote: skipping it
        # would drop the write without a word, so refuse it loudly instead
        if isinstance(fields, list) and len(fields) == 6 and fields[0] in _OPS:
            raise ValueError("this log holds a command written by an older txlab, before sessions expired by log "
                             "time; remove the node's data directory and start it again")
        try:
            op, key, value, expected, session, seq, now, timeout = fields
        except (ValueError, TypeError):
            # a bad entry must not stop every replica at the same index: skip it deterministically
            return Outcome.MALFORMED
        if op not in _OPS or not isinstance(key, str) or (op in (Op.PUT, Op.CAS) and not isinstance(value, str)):
            return Outcome.MALFORMED
        if op == Op.CAS and not isinstance(expected, str):
            return Outcome.MALFORMED
        if not (_is_count(session) and _is_count(seq) and (seq > 0 or not session)):
            return Outcome.MALFORMED
        if not (_is_time(now) and _is_time(timeout) and timeout > 0):
            return Outcome.MALFORMED
        self._advance(now, timeout)
        if op == Op.REGISTER:
            return self._register()
        if session:
            state = self.sessions.get(session)
            if state is None:
                return Outcome.SESSION_EXPIRED
            self.sessions.move_to_end(session)
            if seq <= state.last_seq:
                self.sessions[session] = state._replace(last_active=self.clock)
                return Outcome(state.outcome) if seq == state.last_seq else Outcome.STALE_SEQUENCE
        outcome = self._execute(op, key, value, expected)
        if session:
            self.sessions[session] = Session(seq, int(outcome), self.clock)
        return outcome

    def _advance(self, now: float, timeout: float) -> None:
        """Move log time forward to `now` and expire the sessions idle for longer than `timeout`."""
        self.clock = max(self.clock, float(now))
        horizon = self.clock - timeout
        sessions = self.sessions
        while sessions and sessions[next(iter(sessions))].last_active < horizon:
            sessions.popitem(last=False)

    def _register(self) -> Registered:
        self.registered += 1
        self.sessions[self.registered] = Session(0, int(Outcome.OK), self.clock)
        if len(self.sessions) > self.max_sessions:
            self.sessions.popitem(last=False)
        return Registered(self.registered)

    def _execute(self, op: int, key: str, value: str, expected: str | None) -> Outcome:
        data = self.data
        if op == Op.PUT:
            data[key] = value
            return Outcome.OK
        if op == Op.DELETE:
            return Outcome.OK if data.pop(key, None) is not None else Outcome.NOT_FOUND
        if op == Op.CAS:
            current = data.get(key)
            # an expected JSON null also matches an absent key: "create if missing"
            if current == expected or (current is None and expected == "null"):
                data[key] = value
                return Outcome.OK
            return Outcome.CONFLICT
        return Outcome.MALFORMED

    def get(self, key: str) -> str | None:
        """The canonical JSON text stored under `key`, or None."""
        return self.data.get(key)

    def snapshot(self) -> bytes:
        """The whole state as bytes for a Raft snapshot: the map, the sessions (least recently active first,
        with their last activity), the number of registrations and the log clock."""
        return self.snapshot_view()()

    def snapshot_view(self) -> Callable[[], bytes]:
        """Capture the state now, cheaply (no encoding); the function returned gives exactly `snapshot()` as
        of this call, may run in any thread while this machine goes on applying, and holds the GIL only
        briefly at a time (it packs item by item: one packb call would hold it throughout)."""
        # keys, values and session states are immutable: copying the containers freezes the whole state
        data, sessions = dict(self.data), [[sid, *state] for sid, state in self.sessions.items()]
        registered, clock = self.registered, self.clock

        def serialise() -> bytes:
            packer = msgpack.Packer(autoreset=False, use_bin_type=True)
            packer.pack_array_header(4)
            packer.pack_map_header(len(data))
            for key, value in data.items():
                packer.pack(key)
                packer.pack(value)
            packer.pack_array_header(len(sessions))
            for session in sessions:
                packer.pack(session)
            packer.pack(registered)
            packer.pack(clock)
            return packer.bytes()

        return serialise

    def restore(self, blob: bytes) -> None:
        """Replace the state with a snapshot's (empty bytes = the initial empty state)."""
        if not blob:
            self.data, self.sessions, self.registered, self.clock = {}, OrderedDict(), 0, 0.0
            return
        state = msgpack.unpackb(blob, raw=False)
        if not isinstance(state, list) or len(state) != 4:  # [map, sessions] before sessions had log time
            raise ValueError("this snapshot was written by an older txlab, before sessions expired by log time; "
                             "remove the node's data directory and start it again")
        self.data, sessions, self.registered, self.clock = state
        self.sessions = OrderedDict((sid, Session(seq, outcome, active)) for sid, seq, outcome, active in sessions)
