"""The simulated disk keeps, at a crash, exactly what a real one may keep; and the production storage on it
recovers every synced record through any crash, or refuses to start on bit rot."""

from __future__ import annotations

import random

import pytest

from raft.storage import CorruptLog, Storage
from raft.testing.simdisk import SECTOR, DiskCrash, SimDisk
from raft.types import Entry, EntryType, HardState


def ents(first: int, last: int, term: int, size: int = 40) -> list[Entry]:
    return [Entry(term, i, EntryType.NORMAL, bytes([i % 251 + 1]) * size) for i in range(first, last + 1)]


def disk_with_dir(rng: random.Random | None = None, **kw) -> SimDisk:
    disk = SimDisk(rng or random.Random(1), **kw)
    disk.mkdir("/d")
    disk.sync_dir("/")
    return disk


def test_synced_data_survives_and_unsynced_appends_are_torn_at_a_sector_boundary() -> None:
    seen_lengths, zero_tails = set(), 0
    for seed in range(200):
        disk = disk_with_dir(random.Random(seed))
        fd = disk.open_append("/d/f")
        disk.sync_dir("/d")
        disk.write(fd, b"a" * 700)
        disk.sync(fd)
        disk.write(fd, b"b" * 1500)  # never synced
        disk.crash()
        data = disk.read("/d/f")
        assert data[:700] == b"a" * 700  # what was synced survives
        kept = data[700:].rstrip(b"\0")
        assert kept == b"b" * len(kept)  # a prefix of the unsynced write, maybe followed by zeros
        assert len(kept) in (0, 1024 - 700, 1536 - 700, 2048 - 700, 1500)  # cut at a sector boundary (or whole)
        seen_lengths.add(len(kept))
        zero_tails += len(data) == 2200 and len(kept) < 1500
    assert seen_lengths == {0, 1024 - 700, 1536 - 700, 2048 - 700, 1500} and zero_tails > 0
    assert SECTOR == 512


def test_a_name_whose_directory_was_not_synced_is_gone_after_a_crash() -> None:
    disk = disk_with_dir()
    fd = disk.open_append("/d/f")
    disk.write(fd, b"x")
    disk.sync(fd)  # the data is durable, but not the name
    disk.crash()
    assert disk.listdir("/d") == []
    with pytest.raises(FileNotFoundError):
        disk.read("/d/f")


def test_an_fsync_that_lies_loses_the_data_it_acknowledged() -> None:
    lost = 0
    for seed in range(20):
        disk = disk_with_dir(random.Random(seed))
        fd = disk.open_append("/d/f")
        disk.sync_dir("/d")
        disk.lying_fsync = 1.0
        disk.write(fd, b"x" * 100)
        disk.sync(fd)
        assert disk.lies == 1 and not disk.all_synced()
        disk.crash()
        lost += disk.read("/d/f") != b"x" * 100  # as for any unsynced write, a crash may keep it or not
    assert lost > 0


def test_a_planned_crash_strikes_at_the_chosen_operation() -> None:
    disk = disk_with_dir()
    fd = disk.open_append("/d/f")
    disk.crash_after(2)
    disk.write(fd, b"one")
    with pytest.raises(DiskCrash):
        disk.write(fd, b"two")
    assert disk.read("/d/f") == b"one"


def test_storage_on_the_sim_disk_recovers_every_synced_batch_through_crashes_mid_write() -> None:
    """Hundreds of runs, each crashing at a random disk operation of a random save: recovery returns at
    least every batch synced before, and only whole batches after them."""
    for seed in range(300):
        rng = random.Random(seed)
        disk = SimDisk(rng)
        st, _ = Storage.open("/n", 600, disk=disk)  # small segments: rolls and sealed segments
        synced = 0
        batches = rng.randint(1, 12)
        crash_in = rng.randrange(batches)
        for b in range(batches):
            first = b * 3 + 1
            if b == crash_in:
                disk.crash_after(rng.randint(1, 6))
            try:
                st.save(HardState(1, 1, 0), ents(first, first + 2, 1), None, sync=True)
            except DiskCrash:
                break
            synced = first + 2
        disk.crash()
        _, rec = Storage.open("/n", 600, disk=disk)
        got = [e.index for e in rec.entries]
        assert got == list(range(1, len(got) + 1)), seed  # whole batches, in order
        assert len(got) >= synced and len(got) % 3 == 0, seed
        assert rec.entries == ents(1, len(got), 1)


@pytest.mark.parametrize("where", ["sealed", "open"])
def test_a_flipped_bit_in_a_synced_segment_makes_the_node_refuse_to_start(where: str) -> None:
    disk = SimDisk(random.Random(3))
    st, _ = Storage.open("/n", 600, disk=disk)
    b = 0
    while b < 8 or disk.size_of(max(p for p in disk.files() if p.endswith(".log"))) == 0:
        st.save(HardState(1, 1, 0), ents(b * 3 + 1, b * 3 + 3, 1), None, sync=True)
        b += 1
    st.close()
    segments = [p for p in disk.files() if p.endswith(".log")]
    assert len(segments) > 1
    path = segments[0] if where == "sealed" else segments[-1]
    disk.flip_bit(path, 20, 3)  # inside the first record's payload
    disk.crash()
    with pytest.raises(CorruptLog, match=path):
        Storage.open("/n", 600, disk=disk)
