"""Wire encoding of Raft messages and the framing that splits a TCP stream back into batches."""

from __future__ import annotations

import pytest

from raft.codec import CodecError, FrameReader, decode_batch, encode_batch
from raft.types import ConfState, Entry, EntryType, Message, MsgType, Snapshot


def sample_messages() -> list[Message]:
    return [
        Message(MsgType.APPEND, 1, 2, 7, log_term=6, index=10,
                entries=(Entry(7, 11, EntryType.NORMAL, b"x" * 100), Entry(7, 12, EntryType.NOOP)),
                commit=9),
        Message(MsgType.APPEND_RESP, 2, 1, 7, index=12, reject=True, reject_hint=8),
        Message(MsgType.SNAPSHOT, 1, 3, 7, snapshot=Snapshot(50, 6, ConfState((1, 2, 3)), b"\x00state")),
        Message(MsgType.READ_INDEX, 3, 1, 7, context=b"ctx-1"),
    ]


def test_a_batch_round_trips_every_field():
    frame = encode_batch(sample_messages())
    assert decode_batch(frame[4:]) == sample_messages()


def test_frames_split_at_any_byte_are_reassembled_in_order():
    data = encode_batch(sample_messages()[:2]) + encode_batch(sample_messages()[2:])
    for cut in range(len(data) + 1):
        reader = FrameReader()
        payloads = reader.feed(data[:cut]) + reader.feed(data[cut:])
        assert [m for p in payloads for m in decode_batch(p)] == sample_messages()


def test_garbage_payload_is_a_codec_error_not_a_crash():
    with pytest.raises(CodecError):
        decode_batch(b"\x93\x01\x02")


def test_an_absurd_frame_length_is_rejected():
    with pytest.raises(CodecError):
        FrameReader().feed(b"\xff\xff\xff\xff")


def test_a_snapshot_carries_its_learners_and_old_snapshots_without_them_still_decode():
    """Learners are part of the membership a snapshot records (thesis §4.2.1, §5.1)."""
    from raft.codec import snapshot_from_wire, snapshot_to_wire

    s = Snapshot(9, 2, ConfState((1, 2, 3), (4,)), b"state")
    assert snapshot_from_wire(snapshot_to_wire(s)) == s
    assert snapshot_from_wire([9, 2, [1, 2, 3], b"state"]) == Snapshot(9, 2, ConfState((1, 2, 3)), b"state")
