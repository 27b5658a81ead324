"""Crash recovery of the durable log: what survives, what is cut, what is refused."""

from __future__ import annotations

import os
import re
import shutil
import stat
import threading

import msgpack
import pytest

from raft.codec import snapshot_to_wire
from raft.storage import CorruptLog, Storage, frame, snapshot_record
from raft.types import ConfState, Entry, EntryType, HardState, Snapshot


def ents(first: int, last: int, term: int) -> list[Entry]:
    return [Entry(term, i, EntryType.NORMAL, b"v%d" % i) for i in range(first, last + 1)]


def segment_paths(d: str) -> list[str]:
    wal = os.path.join(d, "wal")
    return [os.path.join(wal, n) for n in sorted(os.listdir(wal))]


def three_batches(d: str) -> tuple[str, list[int]]:
    """A newest segment holding three synced batches (entries 1-2, 3-4, 5-6): its path and record offsets."""
    st, _ = Storage.open(d)
    offsets = []
    for first in (1, 3, 5):
        offsets.append(os.path.getsize(segment_paths(d)[-1]))
        st.save(HardState(1, 1, first - 1), ents(first, first + 1, 1), None, sync=True)
    st.close()
    return segment_paths(d)[-1], offsets


def damage(path: str, at: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(at)
        f.write(data)


def record_directory_fsyncs(monkeypatch) -> list[tuple[str, set[str]]]:
    """Every fsync of a directory from now on, as (its path, the names it held at that moment)."""
    synced: list[tuple[str, set[str]]] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            path = os.readlink(f"/proc/self/fd/{fd}")
            synced.append((path, set(os.listdir(path))))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return synced


def synced_holding(synced: list[tuple[str, set[str]]], directory: str, name: str) -> bool:
    return any(p == os.path.realpath(directory) and name in names for p, names in synced)


def test_synced_entries_and_hard_state_survive_reopen(tmp_path):
    st, rec = Storage.open(str(tmp_path))
    assert rec.entries == [] and rec.hard_state == HardState() and rec.snapshot is None
    st.save(HardState(3, 2, 0), ents(1, 5, 3), None, sync=True)
    st.save(HardState(3, 2, 4), [], None, sync=True)
    st.close()
    _, rec = Storage.open(str(tmp_path))
    assert rec.entries == ents(1, 5, 3)
    assert rec.hard_state == HardState(3, 2, 4)


def test_a_batch_starting_inside_the_log_truncates_the_conflicting_suffix(tmp_path):
    st, _ = Storage.open(str(tmp_path))
    st.save(HardState(1, 1, 0), ents(1, 5, 1), None, sync=True)
    st.save(HardState(2, 0, 0), ents(3, 4, 2), None, sync=True)
    st.close()
    _, rec = Storage.open(str(tmp_path))
    assert rec.entries == ents(1, 2, 1) + ents(3, 4, 2)


@pytest.mark.parametrize("cut", [1, 4, 7, 12])
def test_torn_tail_record_is_cut_and_the_prefix_recovered(tmp_path, cut):
    st, _ = Storage.open(str(tmp_path))
    st.save(HardState(1, 1, 0), ents(1, 3, 1), None, sync=True)
    size_ok = os.path.getsize(segment_paths(str(tmp_path))[-1])
    st.save(None, ents(4, 6, 1), None, sync=True)
    st.close()
    path = segment_paths(str(tmp_path))[-1]
    with open(path, "r+b") as f:
        f.truncate(size_ok + cut)  # a crash mid-write left only `cut` bytes of the second record
    _, rec = Storage.open(str(tmp_path))
    assert rec.entries == ents(1, 3, 1)
    assert rec.truncated_bytes == cut
    assert os.path.getsize(path) == size_ok


def test_garbage_after_the_last_record_is_truncated_and_appends_continue(tmp_path):
    st, _ = Storage.open(str(tmp_path))
    st.save(HardState(1, 1, 0), ents(1, 3, 1), None, sync=True)
    st.close()
    with open(segment_paths(str(tmp_path))[-1], "ab") as f:
        f.write(os.urandom(100))
    st, rec = Storage.open(str(tmp_path))
    assert rec.entries == ents(1, 3, 1) and rec.truncated_bytes == 100
    st.save(None, ents(4, 4, 1), None, sync=True)
    st.close()
    _, rec = Storage.open(str(tmp_path))
    assert rec.entries == ents(1, 4, 1)


def test_a_flipped_bit_in_the_last_record_is_refused_not_cut_as_a_torn_tail(tmp_path):
    # The record is whole and none of its sectors is zero: not a write cut short but bit rot in data that
    # may have been synced and acknowledged (etcd's WAL draws the same line).
    st, _ = Storage.open(str(tmp_path))
    st.save(HardState(1, 1, 0), ents(1, 2, 1), None, sync=True)
    st.save(None, ents(3, 4, 1), None, sync=True)
    st.close()
    path = segment_paths(str(tmp_path))[-1]
    size = os.path.getsize(path)
    damage(path, size - 1, bytes([open(path, "rb").read()[-1] ^ 0x01]))
    with pytest.raises(CorruptLog, match="flipped bit") as err:
        Storage.open(str(tmp_path))
    assert path in str(err.value)
    assert os.path.getsize(path) == size  # nothing was cut


def test_a_last_record_with_a_zero_sector_is_a_torn_write_and_is_cut(tmp_path):
    # The file grew to hold the whole record but one of its sectors never reached the disk.
    st, _ = Storage.open(str(tmp_path))
    st.save(HardState(1, 1, 0), ents(1, 2, 1), None, sync=True)
    size_ok = os.path.getsize(segment_paths(str(tmp_path))[-1])
    st.save(None, [Entry(i, 1, EntryType.NORMAL, os.urandom(700)) for i in (3, 4)], None, sync=True)
    st.close()
    path = segment_paths(str(tmp_path))[-1]
    sector = (size_ok // 512 + 1) * 512  # the first sector that lies wholly inside the second record
    damage(path, sector, bytes(512))
    _, rec = Storage.open(str(tmp_path))
    assert rec.entries == ents(1, 2, 1)
    assert os.path.getsize(path) == size_ok


@pytest.mark.parametrize("zeros", [8, 13, 4096])
def test_a_zero_filled_tail_is_a_torn_tail_and_the_node_starts(tmp_path, zeros):
    st, _ = Storage.open(str(tmp_path))
    st.save(HardState(1, 1, 0), ents(1, 3, 1), None, sync=True)
    st.close()
    path = segment_paths(str(tmp_path))[-1]
    size_ok = os.path.getsize(path)
    with open(path, "ab") as f:
        f.write(bytes(zeros))  # the file grew, but the data of the write never reached the disk
    st, rec = Storage.open(str(tmp_path))
    assert rec.entries == ents(1, 3, 1) and rec.truncated_bytes == zeros
    assert os.path.getsize(path) == size_ok
    st.save(None, ents(4, 4, 1), None, sync=True)
    st.close()
    _, rec = Storage.open(str(tmp_path))
    assert rec.entries == ents(1, 4, 1)


def test_a_half_written_record_followed_by_zeros_is_a_torn_tail(tmp_path):
    # The record's first sector reached the disk, the rest of it and what followed read back as zeros.
    st, _ = Storage.open(str(tmp_path))
    st.save(HardState(1, 1, 0), ents(1, 4, 1), None, sync=True)
    path = segment_paths(str(tmp_path))[-1]
    at = os.path.getsize(path)
    st.save(None, [Entry(i, 1, EntryType.NORMAL, os.urandom(700)) for i in (5, 6)], None, sync=True)
    st.close()
    size = os.path.getsize(path)
    boundary = (at // 512 + 1) * 512
    damage(path, boundary, bytes(size - boundary) + bytes(4000))
    _, rec = Storage.open(str(tmp_path))
    assert rec.entries == ents(1, 4, 1)
    assert os.path.getsize(path) == at


@pytest.mark.parametrize("what", ["flipped payload byte", "zeroed record", "longer length", "shorter length"])
def test_damage_followed_by_a_valid_record_in_the_newest_segment_is_refused_with_file_and_offset(tmp_path, what):
    path, offsets = three_batches(str(tmp_path))
    at = offsets[1]  # the middle batch: the one after it was acknowledged too
    if what == "flipped payload byte":
        damage(path, at + 10, b"\xff")
    elif what == "zeroed record":
        damage(path, at, bytes(offsets[2] - at))
    else:
        length = offsets[2] - at - 8
        damage(path, at, (length + 5 if what == "longer length" else length - 5).to_bytes(4, "little"))
    size = os.path.getsize(path)
    with pytest.raises(CorruptLog, match=rf"{re.escape(path)}.* byte {at}\b"):
        Storage.open(str(tmp_path))
    assert os.path.getsize(path) == size  # nothing was cut


def test_a_zeroed_record_in_a_sealed_segment_is_refused(tmp_path):
    st, _ = Storage.open(str(tmp_path), segment_bytes=64)
    for i in range(1, 6):
        st.save(HardState(1, 1, 0), ents(i, i, 1), None, sync=True)
    st.close()
    first = segment_paths(str(tmp_path))[0]
    damage(first, 0, bytes(os.path.getsize(first)))
    with pytest.raises(CorruptLog, match=rf"{re.escape(first)}.* byte 0\b"):
        Storage.open(str(tmp_path), segment_bytes=64)


def test_damage_inside_a_sealed_segment_is_refused_not_silently_dropped(tmp_path):
    st, _ = Storage.open(str(tmp_path), segment_bytes=64)
    for i in range(1, 6):
        st.save(HardState(1, 1, 0), ents(i, i, 1), None, sync=True)
    st.close()
    first = segment_paths(str(tmp_path))[0]
    with open(first, "r+b") as f:
        f.seek(10)
        f.write(b"\xff\xff")
    with pytest.raises(CorruptLog):
        Storage.open(str(tmp_path), segment_bytes=64)


def test_snapshot_compacts_sealed_segments_and_reopen_starts_after_it(tmp_path):
    st, _ = Storage.open(str(tmp_path), segment_bytes=200)
    for i in range(1, 41):
        st.save(HardState(1, 1, i - 1), ents(i, i, 1), None, sync=True)
    before = st.segment_count()
    st.save_snapshot(Snapshot(30, 1, ConfState((1, 2, 3)), b"state@30"))
    assert st.segment_count() < before
    st.close()
    _, rec = Storage.open(str(tmp_path), segment_bytes=200)
    assert rec.snapshot == Snapshot(30, 1, ConfState((1, 2, 3)), b"state@30")
    assert rec.entries == ents(31, 40, 1)
    assert rec.hard_state.commit == 39


def test_installed_snapshot_that_disagrees_with_the_log_discards_the_log(tmp_path):
    st, _ = Storage.open(str(tmp_path))
    st.save(HardState(1, 1, 0), ents(1, 15, 1), None, sync=True)
    st.save(HardState(3, 0, 20), [], Snapshot(20, 3, ConfState((1, 2, 3)), b"s"), sync=True)
    st.save(None, ents(21, 22, 3), None, sync=True)
    st.close()
    _, rec = Storage.open(str(tmp_path))
    assert rec.snapshot.index == 20
    assert rec.entries == ents(21, 22, 3)


def test_overwrites_spanning_segments_survive_compaction_in_order(tmp_path):
    st, _ = Storage.open(str(tmp_path), segment_bytes=150)
    st.save(HardState(2, 1, 0), ents(1, 12, 2), None, sync=True)  # a long uncommitted term-2 tail
    st.save(HardState(3, 2, 0), ents(6, 8, 3), None, sync=True)  # the term-3 leader overwrote it
    st.save(None, ents(9, 10, 3), None, sync=True)
    st.save_snapshot(Snapshot(8, 3, ConfState((1, 2, 3)), b"s"))
    st.close()
    _, rec = Storage.open(str(tmp_path), segment_bytes=150)
    assert rec.entries == ents(9, 10, 3)


def test_a_leftover_temp_file_never_replaces_the_hard_state(tmp_path):
    st, _ = Storage.open(str(tmp_path))
    st.save(HardState(5, 3, 0), [], None, sync=True)
    st.close()
    with open(os.path.join(str(tmp_path), "hardstate.tmp"), "wb") as f:
        f.write(frame(b"half-written"))
    _, rec = Storage.open(str(tmp_path))
    assert rec.hard_state.term == 5 and rec.hard_state.vote == 3
    assert not os.path.exists(os.path.join(str(tmp_path), "hardstate.tmp"))


def test_creating_the_data_directory_syncs_each_new_directory_entry(tmp_path, monkeypatch):
    synced = record_directory_fsyncs(monkeypatch)
    node = os.path.join(str(tmp_path), "nodes", "n1")
    Storage.open(node)[0].close()
    assert synced_holding(synced, str(tmp_path), "nodes")
    assert synced_holding(synced, os.path.dirname(node), "n1")
    assert synced_holding(synced, node, "wal") and synced_holding(synced, node, "snap")
    assert synced_holding(synced, os.path.join(node, "wal"), os.path.basename(segment_paths(node)[0]))


def test_reopening_syncs_the_data_directory_entry_a_crashed_run_may_not_have(tmp_path, monkeypatch):
    node = os.path.join(str(tmp_path), "n1")
    os.makedirs(os.path.join(node, "wal"))  # created by a run that died before syncing anything
    synced = record_directory_fsyncs(monkeypatch)
    Storage.open(node)[0].close()
    assert synced_holding(synced, str(tmp_path), "n1")
    assert synced_holding(synced, node, "wal") and synced_holding(synced, node, "snap")


def test_every_new_file_name_in_the_log_is_synced_into_its_directory(tmp_path, monkeypatch):
    st, _ = Storage.open(str(tmp_path), segment_bytes=64)
    synced = record_directory_fsyncs(monkeypatch)
    for i in range(1, 4):
        st.save(HardState(1, 1, 0), ents(i, i, 1), None, sync=True)
    st.save_snapshot(Snapshot(2, 1, ConfState((1, 2, 3)), b"s"))
    st.close()
    assert st.segment_count() > 1
    wal = os.path.join(str(tmp_path), "wal")
    assert synced_holding(synced, wal, os.path.basename(segment_paths(str(tmp_path))[-1]))
    assert synced_holding(synced, os.path.join(str(tmp_path), "snap"), f"snap-{2:020d}.snap")
    assert synced_holding(synced, str(tmp_path), "hardstate")


def test_a_snapshot_keeps_its_learners_across_a_reopen(tmp_path):
    """The membership in a snapshot includes the learners (thesis §4.2.1): a restarted node must not forget them."""
    st, _ = Storage.open(str(tmp_path))
    st.save(HardState(1, 1, 0), ents(1, 5, 1), None, sync=True)
    st.save_snapshot(Snapshot(5, 1, ConfState((1, 2, 3), (4,)), b"state@5"))
    st.close()
    _, rec = Storage.open(str(tmp_path))
    assert rec.snapshot is not None and rec.snapshot.conf == ConfState((1, 2, 3), (4,))


def forty_entries(d: str) -> Storage:
    """A log of entries 1-40 (commit 39) spread over many small segments."""
    st, _ = Storage.open(d, segment_bytes=200)
    for i in range(1, 41):
        st.save(HardState(1, 1, i - 1), ents(i, i, 1), None, sync=True)
    return st


SNAP30 = Snapshot(30, 1, ConfState((1, 2, 3)), b"state@30")


def test_log_appends_are_durable_while_a_snapshot_file_is_still_being_written(tmp_path, monkeypatch):
    st = forty_entries(str(tmp_path))
    segments = st.segment_count()
    entered, release = threading.Event(), threading.Event()
    real_sync = os.fdatasync

    def slow_sync(fd: int) -> None:  # a snapshot file that takes as long as this test needs
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".snap.tmp"):
            entered.set()
            release.wait(30)
        real_sync(fd)

    monkeypatch.setattr(os, "fdatasync", slow_sync)
    writer = threading.Thread(target=st.write_snapshot_file, args=(SNAP30,))
    writer.start()
    try:
        assert entered.wait(10)
        for i in range(41, 61):  # appended, synced and rolled into new segments meanwhile
            st.save(HardState(1, 1, i - 1), ents(i, i, 1), None, sync=True)
        assert writer.is_alive()  # every append above returned durable before the snapshot file did
        assert st.segment_count() > segments  # and nothing was dropped for a snapshot not yet durable
        crashed = shutil.copytree(str(tmp_path), str(tmp_path) + "-crashed")  # the disk, were it to crash now
        _, rec = Storage.open(crashed, segment_bytes=200)
        assert rec.snapshot is None and rec.entries == ents(1, 60, 1)
    finally:
        release.set()
        writer.join()
    st.record_snapshot(SNAP30)
    assert st.segment_count() < segments
    st.close()
    _, rec = Storage.open(str(tmp_path), segment_bytes=200)
    assert rec.snapshot == SNAP30
    assert rec.entries == ents(31, 60, 1)


def test_a_crash_while_the_snapshot_file_is_written_keeps_the_old_snapshot_and_the_whole_log(tmp_path):
    st, _ = Storage.open(str(tmp_path), segment_bytes=200)
    for i in range(1, 41):
        st.save(HardState(1, 1, i - 1), ents(i, i, 1), None, sync=True)
        if i == 10:
            st.save_snapshot(Snapshot(10, 1, ConfState((1, 2, 3)), b"state@10"))
    st.close()
    tmp = os.path.join(str(tmp_path), "snap", f"snap-{30:020d}.snap.tmp")
    with open(tmp, "wb") as f:  # the new snapshot's file, half written
        f.write(frame(b"x" * 100)[:60])
    _, rec = Storage.open(str(tmp_path), segment_bytes=200)
    assert rec.snapshot.index == 10
    assert rec.entries == ents(11, 40, 1)
    assert not os.path.exists(tmp)


def test_a_crash_after_the_snapshot_file_is_durable_but_before_it_is_recorded(tmp_path):
    st = forty_entries(str(tmp_path))
    segments = st.segment_count()
    st.write_snapshot_file(SNAP30)
    assert st.segment_count() == segments  # only the log writer's step drops segments
    st.close()
    st, rec = Storage.open(str(tmp_path), segment_bytes=200)
    assert rec.snapshot == SNAP30
    assert rec.entries == ents(31, 40, 1)
    assert rec.hard_state.commit == 39
    st.save(HardState(1, 1, 40), ents(41, 41, 1), None, sync=True)
    st.save_snapshot(Snapshot(35, 1, ConfState((1, 2, 3)), b"state@35"))
    st.close()
    _, rec = Storage.open(str(tmp_path), segment_bytes=200)
    assert rec.snapshot.index == 35 and rec.entries == ents(36, 41, 1)


def test_a_crash_after_the_snapshot_is_recorded_but_before_segments_are_dropped(tmp_path, monkeypatch):
    st = forty_entries(str(tmp_path))
    segments = st.segment_count()
    st.write_snapshot_file(SNAP30)
    monkeypatch.setattr(os, "unlink", lambda path: None)  # the crash comes before any deletion
    st.record_snapshot(SNAP30)
    monkeypatch.undo()
    st.close()
    assert len(segment_paths(str(tmp_path))) == segments
    _, rec = Storage.open(str(tmp_path), segment_bytes=200)
    assert rec.snapshot == SNAP30
    assert rec.entries == ents(31, 40, 1)


def test_recording_a_snapshot_needs_its_durable_file(tmp_path):
    st = forty_entries(str(tmp_path))
    segments = st.segment_count()
    with pytest.raises(ValueError):
        st.record_snapshot(SNAP30)
    assert st.segment_count() == segments
    st.close()
    _, rec = Storage.open(str(tmp_path), segment_bytes=200)
    assert rec.snapshot is None and rec.entries == ents(1, 40, 1)


def test_a_local_snapshot_recorded_after_a_newer_installed_one_changes_nothing(tmp_path):
    st = forty_entries(str(tmp_path))
    st.write_snapshot_file(SNAP30)
    # meanwhile the log writer installs the leader's newer snapshot, which disagrees with the log
    st.save(HardState(3, 0, 50), [], Snapshot(50, 3, ConfState((1, 2, 3)), b"state@50"), sync=True)
    st.save(None, ents(51, 52, 3), None, sync=True)
    st.record_snapshot(SNAP30)
    st.close()
    _, rec = Storage.open(str(tmp_path), segment_bytes=200)
    assert rec.snapshot.index == 50
    assert rec.entries == ents(51, 52, 3)


@pytest.mark.parametrize("size", [0, 5, 300, 70_000, 3 * 1024 * 1024])
def test_a_snapshot_record_is_written_byte_for_byte_as_one_framed_payload(size):
    snap = Snapshot(2**40, 7, ConfState((1, 2, 3)), os.urandom(size))
    assert b"".join(snapshot_record(snap)) == frame(msgpack.packb(snapshot_to_wire(snap), use_bin_type=True))
