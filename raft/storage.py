"""Durable Raft state on local disk: a CRC-framed write-ahead log, the hard state and snapshots.

Layout of a node's directory:

- `wal/wal-<seq>.log`: append-only segments of records `length (4 bytes) | crc32 (4) | msgpack payload`.
  A record is one Ready batch (`ENTRIES`: its entries and the commit index) or a `SNAPSHOT` marker. A
  batch whose first index is i supersedes every logged entry >= i (conflict truncation is a replay rule,
  so nothing is ever rewritten in place).
- `hardstate`: term, vote and commit, replaced atomically (temp file, fsync, rename, fsync directory)
  whenever term or vote changes.
- `snap/snap-<index>.snap`: one CRC-framed record per snapshot, written the same atomic way. Recovery
  starts from the newest one whose record is intact, so a snapshot file counts from the moment its
  rename is durable, whether or not the log records it yet.

Guarantees: after `save(..., sync=True)` returns, everything passed so far survives a crash (one
fsync per call: group commit), and so do the names that reach it: a directory is fsynced after a name
appears in it (the node's directory and its `wal`/`snap`, on every `open`, since an earlier run may
have died before syncing them; each new segment; each renamed snapshot or hard state file).

Snapshots taken locally are made durable in two steps, so that a large file never holds up the log:
`write_snapshot_file` (the slow one, in any thread, concurrently with `save`) makes the file durable;
then `record_snapshot`, on the log writer, marks it in the log and only then deletes the segments and
older snapshots it covers. Nothing the log made durable is deleted before a durable snapshot covers it,
so a crash at any point recovers either the old snapshot and the whole log or the new snapshot and the
log after it (the entries it covers are committed, so no later record can contradict it).

Recovery rule. A record is well-formed when its length is 1..MAX_RECORD, it ends inside the file, its
payload matches the CRC and decodes as a log record `[kind, a, b]`. Zero length never is: an all-zero
header would otherwise pass (crc32(b"") == 0), and zeros are what a file that grew without its data
reaching the disk reads back as. Replay stops at the first record that is not well-formed, at offset
`bad`; then:

- in the newest segment, if no well-formed record starts anywhere after `bad` (the damage runs to
  the end, or only zeros or garbage follow) and the bad record looks torn, it is a torn tail: the
  write never finished, so it was never acknowledged (acknowledgement follows the fsync). It is
  truncated and the node starts. A record looks torn, as in etcd's WAL, when it does not fit in the
  file (its header is cut, zero or runs past the end) or when one of its 512-byte disk sectors is
  all zeros (the file grew but that data never reached the disk). A complete record with no
  zero sector that fails its checksum is a flipped bit in data that may have been synced:
  `CorruptLog`, even at the very end.
- if a well-formed record does start after `bad`, the damaged record was written before a record that
  reached the disk, so it may have been acknowledged (entries a leader counted as committed here):
  `CorruptLog` names the file and the offset, and nothing is cut.
- in a sealed (older) segment, every bad record is `CorruptLog`: a segment is fsynced before the next
  one is created.

Refusing is the safe side of this rule: a torn record whose payload happens to embed a byte-exact
well-formed record, or an unsynced write whose later page reached the disk while an earlier one did
not, is reported as `CorruptLog` too, and needs an operator instead of losing data silently.
"""

from __future__ import annotations

import contextlib
import os
import re
import struct
import zlib
from dataclasses import dataclass, field

import msgpack

from raft.codec import entry_from_wire, entry_to_wire, snapshot_from_wire, snapshot_to_wire
from raft.disk import OS_DISK, Disk, make_dir_durable, write_atomically
from raft.types import Entry, HardState, Snapshot

RECORD_HEADER = struct.Struct("<II")  # payload length, crc32(payload)
MAX_RECORD = 512 * 1024 * 1024
KIND_ENTRIES = 1
KIND_SNAPSHOT = 2
DEFAULT_SEGMENT_BYTES = 16 * 1024 * 1024
SNAPSHOTS_KEPT = 2


class CorruptLog(RuntimeError):
    """Damage in a part of the log that was already durable: refusing to guess."""


def frame(payload: bytes) -> bytes:
    """One record: length and CRC header followed by the payload."""
    return RECORD_HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def record_at(data: bytes, pos: int) -> tuple[bytes, int] | None:
    """The payload of the record at `pos` and the offset after it, if the framing holds: a length of
    1..MAX_RECORD that ends inside `data` and a matching CRC."""
    if len(data) - pos < RECORD_HEADER.size:
        return None
    length, crc = RECORD_HEADER.unpack_from(data, pos)
    end = pos + RECORD_HEADER.size + length
    if not 0 < length <= MAX_RECORD or end > len(data):  # zero length: an all-zero header has a valid CRC
        return None
    payload = data[pos + RECORD_HEADER.size:end]
    return (payload, end) if zlib.crc32(payload) == crc else None


def read_records(data: bytes) -> tuple[list[bytes], int]:
    """The valid records at the start of `data`, and the offset where validity ends."""
    out: list[bytes] = []
    pos = 0
    while (rec := record_at(data, pos)) is not None:
        out.append(rec[0])
        pos = rec[1]
    return out, pos


# Every log record packs as a 3-item list [kind, a, b]: fixarray(3), then the kind (a positive fixint).
_RECORD_START = re.compile(rb"\x93[\x01\x02]")


def _wal_record_at(data: bytes, pos: int) -> tuple[list, int] | None:
    """The decoded log record at `pos` and the offset after it, if it is well-formed."""
    rec = record_at(data, pos)
    if rec is None or not _RECORD_START.match(rec[0]):
        return None
    try:
        return msgpack.unpackb(rec[0]), rec[1]
    except ValueError:  # every msgpack decoding error is a ValueError
        return None


def read_wal(data: bytes) -> tuple[list[list], int]:
    """The well-formed log records at the start of a segment, decoded, and the offset where they end."""
    out: list[list] = []
    pos = 0
    while (rec := _wal_record_at(data, pos)) is not None:
        out.append(rec[0])
        pos = rec[1]
    return out, pos


def next_wal_record(data: bytes, bad: int) -> int | None:
    """The offset of the first well-formed log record that starts after `bad`, if any."""
    # a record's payload starts with _RECORD_START: look only where it occurs, not at every byte
    for m in _RECORD_START.finditer(data, bad + 1 + RECORD_HEADER.size):
        if _wal_record_at(data, m.start() - RECORD_HEADER.size) is not None:
            return m.start() - RECORD_HEADER.size
    return None


SECTOR = 512  # the unit a disk writes atomically (or not at all)


def looks_torn(data: bytes, pos: int) -> bool:
    """Whether the damaged record at `pos` looks like a write a crash cut short rather than a flipped
    bit: it does not fit in `data`, or one of its sectors (aligned on file offsets) is all zeros."""
    if len(data) - pos < RECORD_HEADER.size:
        return True
    length, _ = RECORD_HEADER.unpack_from(data, pos)
    end = pos + RECORD_HEADER.size + length
    if not 0 < length <= MAX_RECORD or end > len(data):
        return True
    start = pos
    while start < end:
        stop = min(end, (start // SECTOR + 1) * SECTOR)
        if not any(data[start:stop]):
            return True
        start = stop
    return False


def snapshot_record(snapshot: Snapshot) -> list[bytes]:
    """The snapshot's record, `frame(msgpack.packb(snapshot_to_wire(snapshot), use_bin_type=True))`, as
    chunks that leave its data uncopied: copying tens of megabytes holds the interpreter lock, and with
    it the event loop, for tens of milliseconds."""
    wire = snapshot_to_wire(snapshot)
    at = next((k for k, x in enumerate(wire) if x is snapshot.data), None)
    if at is None:  # the wire form does not carry the data as is: pack it whole
        return [frame(msgpack.packb(wire, use_bin_type=True))]
    packer = msgpack.Packer(use_bin_type=True)
    head = (packer.pack_array_header(len(wire)) + b"".join(packer.pack(x) for x in wire[:at])
            + _bin_header(len(snapshot.data)))
    tail = b"".join(packer.pack(x) for x in wire[at + 1:])
    length = len(head) + len(snapshot.data) + len(tail)
    if length > MAX_RECORD:
        raise ValueError(f"a snapshot of {length} bytes exceeds the {MAX_RECORD}-byte record limit")
    crc = zlib.crc32(tail, zlib.crc32(snapshot.data, zlib.crc32(head)))  # crc32 runs without the lock
    return [RECORD_HEADER.pack(length, crc) + head, snapshot.data, tail]


def _bin_header(n: int) -> bytes:
    """msgpack's header of an n-byte bin (the smallest of bin 8/16/32, as `packb` picks)."""
    if n < 1 << 8:
        return struct.pack(">BB", 0xC4, n)
    if n < 1 << 16:
        return struct.pack(">BH", 0xC5, n)
    return struct.pack(">BI", 0xC6, n)


@dataclass
class _Segment:
    seq: int
    path: str
    max_index: int = 0  # highest entry (or snapshot marker) index recorded in it


@dataclass
class Recovered:
    """What a node restarts from: its hard state, newest snapshot and the log entries after it."""

    hard_state: HardState = field(default_factory=HardState)
    snapshot: Snapshot | None = None
    entries: list[Entry] = field(default_factory=list)
    truncated_bytes: int = 0  # size of the torn tail cut off the newest segment


class Storage:
    """A node's durable log. Every method blocks on disk I/O: call them off the event loop. `save`,
    `record_snapshot` and `save_snapshot` touch the log: one thread at a time (the node's writer thread).
    `write_snapshot_file` touches only its own file and may run in another thread meanwhile."""

    def __init__(self, directory: str, segment_bytes: int = DEFAULT_SEGMENT_BYTES, disk: Disk = OS_DISK) -> None:
        self.disk = disk
        self.dir = directory
        self.wal_dir = os.path.join(directory, "wal")
        self.snap_dir = os.path.join(directory, "snap")
        self.segment_bytes = segment_bytes
        self._segments: list[_Segment] = []
        self._fd = -1
        self._size = 0
        self._hard = HardState()
        self._commit_logged = 0
        self._snapshot_index = 0

    # ----------------------------------------------------------------------------------- recovery
    @classmethod
    def open(cls, directory: str, segment_bytes: int = DEFAULT_SEGMENT_BYTES,
             disk: Disk = OS_DISK) -> tuple[Storage, Recovered]:
        """Open (creating if needed) the log in `directory` and recover its durable state."""
        st = cls(directory, segment_bytes, disk)
        for d in (directory, st.wal_dir, st.snap_dir):
            make_dir_durable(d, disk)
        rec = Recovered()
        rec.snapshot = st._load_snapshot()
        hs = st._load_hard_state()
        base = (rec.snapshot.index, rec.snapshot.term) if rec.snapshot else (0, 0)
        entries, commit, rec.truncated_bytes = st._replay(base)
        commit = max(hs.commit, commit, base[0])
        last = entries[-1].index if entries else base[0]
        rec.hard_state = HardState(hs.term, hs.vote, min(commit, last))
        rec.entries = entries
        st._hard = rec.hard_state
        st._commit_logged = rec.hard_state.commit
        st._snapshot_index = base[0]
        st._open_tail()
        return st, rec

    def _load_hard_state(self) -> HardState:
        path = os.path.join(self.dir, "hardstate")
        with contextlib.suppress(FileNotFoundError):
            self.disk.unlink(path + ".tmp")
        try:
            data = self.disk.read(path)
        except FileNotFoundError:
            return HardState()
        records, _ = read_records(data)
        if not records:
            raise CorruptLog(f"{path} fails its checksum")
        term, vote, commit = msgpack.unpackb(records[0])
        return HardState(term, vote, commit)

    def _snapshot_files(self) -> list[str]:
        names = sorted(n for n in self.disk.listdir(self.snap_dir) if n.endswith(".snap"))
        return [os.path.join(self.snap_dir, n) for n in names]

    def _load_snapshot(self) -> Snapshot | None:
        for name in self.disk.listdir(self.snap_dir):
            if name.endswith(".tmp"):
                self.disk.unlink(os.path.join(self.snap_dir, name))
        for path in reversed(self._snapshot_files()):
            records, _ = read_records(self.disk.read(path))
            if records:
                return snapshot_from_wire(msgpack.unpackb(records[0]))
        return None

    def _replay(self, base: tuple[int, int]) -> tuple[list[Entry], int, int]:
        """Rebuild the log after `base` = (index, term) of the snapshot from every segment."""
        names = sorted(n for n in self.disk.listdir(self.wal_dir) if n.endswith(".log"))
        entries: list[Entry] = []
        first = 1  # index of entries[0]
        commit = 0
        truncated = 0
        for pos, name in enumerate(names):
            seg = _Segment(int(name[4:-4]), os.path.join(self.wal_dir, name))
            data = self.disk.read(seg.path)
            records, good = read_wal(data)
            if good < len(data):
                if pos != len(names) - 1:
                    raise CorruptLog(f"{seg.path}: damaged record at byte {good} of a sealed segment")
                after = next_wal_record(data, good)
                if after is not None:
                    raise CorruptLog(f"{seg.path}: damaged record at byte {good}, followed by a valid record at "
                                     f"byte {after}: it may have been acknowledged, refusing to cut it")
                if not looks_torn(data, good):
                    raise CorruptLog(f"{seg.path}: the last record, at byte {good}, fails its checksum with "
                                     f"no zero sector: a flipped bit, not a torn write; refusing to cut it")
                truncated = len(data) - good
                self.disk.truncate(seg.path, good)
            for rec in records:
                if rec[0] == KIND_ENTRIES:
                    batch = [entry_from_wire(w) for w in rec[1]]
                    commit = max(commit, rec[2])
                    if batch:
                        i = batch[0].index
                        if i > first + len(entries):
                            # legit only where compaction removed what the snapshot covers (checked below)
                            entries, first = [], i
                        del entries[max(0, i - first):]
                        if not entries:
                            first = i
                        entries.extend(batch)
                        seg.max_index = max(seg.max_index, batch[-1].index)
                elif rec[0] == KIND_SNAPSHOT:
                    entries, first = _cut_at(entries, first, rec[1], rec[2])
                    seg.max_index = max(seg.max_index, rec[1])
            self._segments.append(seg)
        entries, first = _cut_at(entries, first, *base)
        if entries and first > base[0] + 1:
            raise CorruptLog(f"log resumes at index {first} but the newest snapshot ends at {base[0]}")
        return entries, commit, truncated

    def _open_tail(self) -> None:
        if not self._segments:
            self._segments.append(_Segment(1, os.path.join(self.wal_dir, f"wal-{1:016d}.log")))
        tail = self._segments[-1]
        self._fd = self.disk.open_append(tail.path)
        self._size = self.disk.size(self._fd)
        self.disk.sync_dir(self.wal_dir)

    # --------------------------------------------------------------------------------------- writes
    def save(self, hard_state: HardState | None, entries: list[Entry], snapshot: Snapshot | None,
             sync: bool) -> None:
        """Persist one Ready batch; with `sync`, everything is on stable storage when this returns."""
        if snapshot is not None and snapshot.index > self._snapshot_index:
            # the leader's snapshot: its file is durable before the marker, like a local one's
            self.write_snapshot_file(snapshot)
            self._append_snapshot_marker(snapshot)
        commit = self._commit_logged
        if hard_state is not None:
            if (hard_state.term, hard_state.vote) != (self._hard.term, self._hard.vote):
                write_atomically(os.path.join(self.dir, "hardstate"),
                                 frame(msgpack.packb([hard_state.term, hard_state.vote, hard_state.commit])),
                                 disk=self.disk)
            self._hard = hard_state
            commit = hard_state.commit
        if entries or commit != self._commit_logged:
            payload = msgpack.packb([KIND_ENTRIES, [entry_to_wire(e) for e in entries], commit],
                                    use_bin_type=True)
            self._append(frame(payload), entries[-1].index if entries else 0)
            self._commit_logged = commit
        if sync:
            self.disk.sync(self._fd)
        if self._size >= self.segment_bytes:
            self._roll()
        if snapshot is not None:
            self._drop_obsolete(snapshot.index)

    def save_snapshot(self, snapshot: Snapshot) -> None:
        """Persist a snapshot taken locally and drop the log segments and snapshots it makes obsolete,
        both steps in the calling thread."""
        self.write_snapshot_file(snapshot)
        self.record_snapshot(snapshot)

    def write_snapshot_file(self, snapshot: Snapshot) -> None:
        """Make `snapshot`'s file durable (data, rename, directory entry); the log is neither read nor
        changed, so this may run in its own thread while `save` goes on. From its return recovery starts
        from this snapshot: pass only one whose index is committed and durable in the log. Two calls
        never share a file: each index is written once (a leader's snapshot lies past the commit index,
        a local one at or before it)."""
        path = os.path.join(self.snap_dir, f"snap-{snapshot.index:020d}.snap")
        write_atomically(path, *snapshot_record(snapshot), disk=self.disk)

    def record_snapshot(self, snapshot: Snapshot) -> None:
        """The log writer's part of a local snapshot, once `write_snapshot_file` returned for it: mark it
        in the log (synced) and drop the segments and older snapshots it covers. A snapshot no newer than
        one already recorded changes nothing (a newer one from the leader may even have replaced its file)."""
        if snapshot.index <= self._snapshot_index:
            return
        if not self.disk.exists(os.path.join(self.snap_dir, f"snap-{snapshot.index:020d}.snap")):
            raise ValueError(f"no snapshot file at index {snapshot.index}: the log is compacted only past one")
        self._append_snapshot_marker(snapshot)
        self.disk.sync(self._fd)
        if self._size >= self.segment_bytes:
            self._roll()
        self._drop_obsolete(snapshot.index)

    def _append(self, record: bytes, index: int) -> None:
        self.disk.write(self._fd, record)
        self._size += len(record)
        seg = self._segments[-1]
        seg.max_index = max(seg.max_index, index)

    def _roll(self) -> None:
        self.disk.sync(self._fd)
        self.disk.close(self._fd)
        seq = self._segments[-1].seq + 1
        self._segments.append(_Segment(seq, os.path.join(self.wal_dir, f"wal-{seq:016d}.log")))
        self._fd = self.disk.open_append(self._segments[-1].path)
        self._size = 0
        self.disk.sync_dir(self.wal_dir)

    def _append_snapshot_marker(self, snapshot: Snapshot) -> None:
        self._append(frame(msgpack.packb([KIND_SNAPSHOT, snapshot.index, snapshot.term])), snapshot.index)
        self._snapshot_index = snapshot.index

    def _drop_obsolete(self, index: int) -> None:
        """Delete the oldest sealed segments while every record in them is covered by the snapshot at
        `index`; only a prefix goes, so replaying the rest keeps every overwrite in its order."""
        while len(self._segments) > 1 and self._segments[0].max_index <= index:
            self.disk.unlink(self._segments.pop(0).path)
        for path in self._snapshot_files()[:-SNAPSHOTS_KEPT]:
            self.disk.unlink(path)

    @property
    def hard_state(self) -> HardState:
        """The hard state most recently passed to `save` (durable once a synced save returned)."""
        return self._hard

    def segment_count(self) -> int:
        return len(self._segments)

    def close(self) -> None:
        if self._fd >= 0:
            self.disk.close(self._fd)
            self._fd = -1


def _cut_at(entries: list[Entry], first: int, index: int, term: int) -> tuple[list[Entry], int]:
    """Apply a snapshot at (index, term) to the log: keep what follows it if the log agrees there."""
    if index < first:
        return entries, first if entries else index + 1
    k = index - first
    if k < len(entries) and entries[k].term == term:
        return entries[k + 1:], index + 1
    return [], index + 1
