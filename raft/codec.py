"""Binary encoding of Raft messages and entries: msgpack arrays, length-prefixed frames.

A frame on the wire is a 4-byte big-endian length followed by one msgpack array holding every
message a node produced for one peer in one Ready (so a batch costs one write and one decode).
Messages are encoded positionally (arrays, not maps) because the field names would otherwise
dominate the size of a heartbeat.
"""

from __future__ import annotations

import struct

import msgpack

from raft.types import ConfState, Entry, EntryType, Message, MsgType, Snapshot

FRAME_HEADER = struct.Struct(">I")
MAX_FRAME = 256 * 1024 * 1024  # a frame larger than this is a corrupt or hostile stream, not a batch

_ENTRY_TYPES = {int(t): t for t in EntryType}
_MSG_TYPES = {int(t): t for t in MsgType}


class CodecError(ValueError):
    """The bytes are not a valid encoding of what was expected."""


def entry_to_wire(e: Entry) -> list:
    return [e.term, e.index, int(e.type), e.data]


def entry_from_wire(w: list) -> Entry:
    return Entry(w[0], w[1], _ENTRY_TYPES[w[2]], w[3])


def snapshot_to_wire(s: Snapshot) -> list:
    return [s.index, s.term, list(s.conf.voters), s.data, list(s.conf.learners)]


def snapshot_from_wire(w: list) -> Snapshot:
    learners = tuple(w[4]) if len(w) > 4 else ()  # snapshots written before learners existed have none
    return Snapshot(w[0], w[1], ConfState(tuple(w[2]), learners), w[3])


def message_to_wire(m: Message) -> list:
    return [int(m.type), m.frm, m.to, m.term, m.log_term, m.index,
            [[e.term, e.index, int(e.type), e.data] for e in m.entries],
            m.commit, m.reject, m.reject_hint,
            None if m.snapshot is None else snapshot_to_wire(m.snapshot), m.context]


def message_from_wire(w: list) -> Message:
    types = _ENTRY_TYPES
    return Message(_MSG_TYPES[w[0]], w[1], w[2], w[3], w[4], w[5],
                   tuple([Entry(e[0], e[1], types[e[2]], e[3]) for e in w[6]]),
                   w[7], w[8], w[9], None if w[10] is None else snapshot_from_wire(w[10]), w[11])


def encode_batch(messages: list[Message]) -> bytes:
    """One frame (length prefix included) carrying `messages` in order."""
    payload = msgpack.packb([message_to_wire(m) for m in messages], use_bin_type=True)
    return FRAME_HEADER.pack(len(payload)) + payload


def decode_batch(payload: bytes) -> list[Message]:
    """The messages of one frame's payload (without its length prefix); CodecError if malformed."""
    try:
        return [message_from_wire(w) for w in msgpack.unpackb(payload, raw=False, use_list=True)]
    except (ValueError, TypeError, KeyError, IndexError, msgpack.ExtraData) as exc:
        raise CodecError(f"malformed message batch: {exc}") from exc


class FrameReader:
    """Splits a byte stream into frame payloads; tolerates frames split across reads."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """Append `data`; return every complete payload now available, in order."""
        buf = self._buf
        buf += data
        out: list[bytes] = []
        pos = 0
        n = len(buf)
        while n - pos >= 4:
            (length,) = FRAME_HEADER.unpack_from(buf, pos)
            if length > MAX_FRAME:
                raise CodecError(f"frame of {length} bytes exceeds the {MAX_FRAME} limit")
            end = pos + 4 + length
            if end > n:
                break
            out.append(bytes(buf[pos + 4:end]))
            pos = end
        if pos:
            del buf[:pos]
        return out
