"""The replicated key-value state machine: put, delete, compare-and-set, and exactly-once client sessions.

Every replica applies the same committed commands in the same order, so every replica holds the same
map. Values are stored as canonical JSON text (sorted keys, no spaces) so that compare-and-set
compares JSON values, not spellings, and a read can be served without re-encoding.

Exactly-once: a command may carry (client_id, seq). A session remembers the last seq applied for each
client and its result; a retry of that seq (e.g. after a timeout or a leader change that re-proposed
it) returns the remembered result instead of applying twice. Sessions are evicted oldest-first past
`max_sessions`, identically on every replica because eviction depends only on the applied sequence.
"""

from __future__ import annotations

import enum
import json
from typing import Any

import msgpack


class Op(enum.IntEnum):
    PUT = 1
    DELETE = 2
    CAS = 3


_OPS = frozenset(int(op) for op in Op)


class Outcome(enum.IntEnum):
    """What applying a command did; the HTTP layer maps it to a status code."""

    OK = 0  # put done / cas swapped / delete removed a key
    NOT_FOUND = 1  # delete of an absent key
    CONFLICT = 2  # cas: current value differs from expected
    STALE_SEQUENCE = 3  # a seq older than the session's last one: its result is no longer known
    MALFORMED = 4  # not a valid command: ignored, identically on every replica


def canonical_json(value: Any) -> str:
    """The one spelling of a JSON value this store keeps and compares."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def encode_command(op: Op, key: str, value: str | None = None, expected: str | None = None,
                   client_id: str = "", seq: int = 0) -> bytes:
    """A command as it is stored in the Raft log (value and expected are canonical JSON text)."""
    return msgpack.packb([int(op), key, value, expected, client_id, seq], use_bin_type=True)


class KVStateMachine:
    """In-memory map rebuilt on restart from the newest snapshot plus the committed log."""

    def __init__(self, max_sessions: int = 100_000) -> None:
        self.data: dict[str, str] = {}
        self.sessions: dict[str, tuple[int, int]] = {}  # client_id -> (last seq, its Outcome)
        self.max_sessions = max_sessions

    def apply(self, command: bytes) -> Outcome:
        """Apply one committed command (deterministic: same commands, same order, same state)."""
        try:
            op, key, value, expected, client_id, seq = msgpack.unpackb(command, raw=False)
        except (ValueError, TypeError, msgpack.UnpackException):
            # a bad entry must not stop every replica at the same index: skip it deterministically
            return Outcome.MALFORMED
        if op not in _OPS or not isinstance(key, str) or (op != Op.DELETE and not isinstance(value, str)):
            return Outcome.MALFORMED
        if op == Op.CAS and not isinstance(expected, str):
            return Outcome.MALFORMED
        if client_id:
            last = self.sessions.get(client_id)
            if last is not None:
                if seq == last[0]:
                    return Outcome(last[1])
                if seq < last[0]:
                    return Outcome.STALE_SEQUENCE
        outcome = self._execute(op, key, value, expected)
        if client_id:
            self.sessions.pop(client_id, None)  # re-insert at the end: eviction is oldest-used first
            self.sessions[client_id] = (seq, int(outcome))
            if len(self.sessions) > self.max_sessions:
                del self.sessions[next(iter(self.sessions))]
        return outcome

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
        """The whole state (map and sessions) as bytes for a Raft snapshot."""
        return msgpack.packb([self.data, [[c, s, o] for c, (s, o) in self.sessions.items()]],
                             use_bin_type=True)

    def restore(self, blob: bytes) -> None:
        """Replace the state with a snapshot's (empty bytes = the initial empty state)."""
        if not blob:
            self.data, self.sessions = {}, {}
            return
        data, sessions = msgpack.unpackb(blob, raw=False)
        self.data = data
        self.sessions = {c: (s, o) for c, s, o in sessions}
