"""Durable Raft state on local disk: a CRC-framed write-ahead log, the hard state and snapshots.

Layout of a node's directory:

- `wal/wal-<seq>.log`: append-only segments of records `length (4 bytes) | crc32 (4) | msgpack payload`.
  A record is one Ready batch (`ENTRIES`: its entries and the commit index) or a `SNAPSHOT` marker. A
  batch whose first index is i supersedes every logged entry >= i (conflict truncation is a replay rule,
  so nothing is ever rewritten in place).
- `hardstate`: term, vote and commit, replaced atomically (temp file, fsync, rename, fsync directory)
  whenever term or vote changes.
- `snap/snap-<index>.snap`: one CRC-framed record per snapshot, written the same atomic way.

Guarantees: after `save(..., sync=True)` returns, everything passed so far survives a crash (one
fsync per call: group commit). On `open`, a torn or garbage tail of the newest segment is truncated
away (it was never acknowledged, because acknowledgement follows the fsync); damage anywhere else
raises `CorruptLog` rather than silently losing acknowledged entries.
"""

from __future__ import annotations

import contextlib
import os
import struct
import zlib
from dataclasses import dataclass, field

import msgpack

from raft.codec import entry_from_wire, entry_to_wire, snapshot_from_wire, snapshot_to_wire
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


def read_records(data: bytes) -> tuple[list[bytes], int]:
    """The valid records at the start of `data`, and the offset where validity ends."""
    out: list[bytes] = []
    pos = 0
    n = len(data)
    while n - pos >= RECORD_HEADER.size:
        length, crc = RECORD_HEADER.unpack_from(data, pos)
        end = pos + RECORD_HEADER.size + length
        if length > MAX_RECORD or end > n:
            break
        payload = data[pos + RECORD_HEADER.size:end]
        if zlib.crc32(payload) != crc:
            break
        out.append(payload)
        pos = end
    return out, pos


def fsync_dir(path: str) -> None:
    """Make a rename or a create inside `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: str, data: bytes) -> None:
    """Replace `path` with `data` so that a crash leaves either the old or the new content."""
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        _write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(os.path.dirname(path) or ".")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


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
    """A node's durable log. `save` and `save_snapshot` block on disk I/O: call them off the event loop,
    from one thread at a time (the node uses a single writer thread)."""

    def __init__(self, directory: str, segment_bytes: int = DEFAULT_SEGMENT_BYTES) -> None:
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
    def open(cls, directory: str, segment_bytes: int = DEFAULT_SEGMENT_BYTES) -> tuple[Storage, Recovered]:
        """Open (creating if needed) the log in `directory` and recover its durable state."""
        st = cls(directory, segment_bytes)
        for d in (directory, st.wal_dir, st.snap_dir):
            os.makedirs(d, exist_ok=True)
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
            os.unlink(path + ".tmp")
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return HardState()
        records, _ = read_records(data)
        if not records:
            raise CorruptLog(f"{path} fails its checksum")
        term, vote, commit = msgpack.unpackb(records[0])
        return HardState(term, vote, commit)

    def _snapshot_files(self) -> list[str]:
        names = sorted(n for n in os.listdir(self.snap_dir) if n.endswith(".snap"))
        return [os.path.join(self.snap_dir, n) for n in names]

    def _load_snapshot(self) -> Snapshot | None:
        for name in os.listdir(self.snap_dir):
            if name.endswith(".tmp"):
                os.unlink(os.path.join(self.snap_dir, name))
        for path in reversed(self._snapshot_files()):
            with open(path, "rb") as f:
                records, _ = read_records(f.read())
            if records:
                return snapshot_from_wire(msgpack.unpackb(records[0]))
        return None

    def _replay(self, base: tuple[int, int]) -> tuple[list[Entry], int, int]:
        """Rebuild the log after `base` = (index, term) of the snapshot from every segment."""
        names = sorted(n for n in os.listdir(self.wal_dir) if n.endswith(".log"))
        entries: list[Entry] = []
        first = 1  # index of entries[0]
        commit = 0
        truncated = 0
        for pos, name in enumerate(names):
            seg = _Segment(int(name[4:-4]), os.path.join(self.wal_dir, name))
            with open(seg.path, "rb") as f:
                data = f.read()
            records, good = read_records(data)
            if good < len(data):
                if pos != len(names) - 1:
                    raise CorruptLog(f"{seg.path}: damaged record at byte {good} of a sealed segment")
                truncated = len(data) - good
                with open(seg.path, "r+b") as f:
                    f.truncate(good)
                    os.fsync(f.fileno())
            for payload in records:
                rec = msgpack.unpackb(payload)
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
        self._fd = os.open(tail.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._size = os.fstat(self._fd).st_size
        fsync_dir(self.wal_dir)

    # --------------------------------------------------------------------------------------- writes
    def save(self, hard_state: HardState | None, entries: list[Entry], snapshot: Snapshot | None,
             sync: bool) -> None:
        """Persist one Ready batch; with `sync`, everything is on stable storage when this returns."""
        if snapshot is not None and snapshot.index > self._snapshot_index:
            self._write_snapshot_file(snapshot)
            self._append(frame(msgpack.packb([KIND_SNAPSHOT, snapshot.index, snapshot.term])),
                         snapshot.index)
        commit = self._commit_logged
        if hard_state is not None:
            if (hard_state.term, hard_state.vote) != (self._hard.term, self._hard.vote):
                write_atomically(os.path.join(self.dir, "hardstate"),
                                 frame(msgpack.packb([hard_state.term, hard_state.vote, hard_state.commit])))
            self._hard = hard_state
            commit = hard_state.commit
        if entries or commit != self._commit_logged:
            payload = msgpack.packb([KIND_ENTRIES, [entry_to_wire(e) for e in entries], commit],
                                    use_bin_type=True)
            self._append(frame(payload), entries[-1].index if entries else 0)
            self._commit_logged = commit
        if sync:
            os.fdatasync(self._fd)
        if self._size >= self.segment_bytes:
            self._roll()
        if snapshot is not None:
            self._drop_obsolete(snapshot.index)

    def save_snapshot(self, snapshot: Snapshot) -> None:
        """Persist a snapshot taken locally and drop the log segments and snapshots it makes obsolete."""
        self.save(None, [], snapshot, sync=True)

    def _append(self, record: bytes, index: int) -> None:
        _write_all(self._fd, record)
        self._size += len(record)
        seg = self._segments[-1]
        seg.max_index = max(seg.max_index, index)

    def _roll(self) -> None:
        os.fdatasync(self._fd)
        os.close(self._fd)
        seq = self._segments[-1].seq + 1
        self._segments.append(_Segment(seq, os.path.join(self.wal_dir, f"wal-{seq:016d}.log")))
        self._fd = os.open(self._segments[-1].path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._size = 0
        fsync_dir(self.wal_dir)

    def _write_snapshot_file(self, snapshot: Snapshot) -> None:
        path = os.path.join(self.snap_dir, f"snap-{snapshot.index:020d}.snap")
        write_atomically(path, frame(msgpack.packb(snapshot_to_wire(snapshot), use_bin_type=True)))
        self._snapshot_index = snapshot.index

    def _drop_obsolete(self, index: int) -> None:
        """Delete the oldest sealed segments while every record in them is covered by the snapshot at
        `index`; only a prefix goes, so replaying the rest keeps every overwrite in its order."""
        while len(self._segments) > 1 and self._segments[0].max_index <= index:
            os.unlink(self._segments.pop(0).path)
        for path in self._snapshot_files()[:-SNAPSHOTS_KEPT]:
            os.unlink(path)

    @property
    def hard_state(self) -> HardState:
        """The hard state most recently passed to `save` (durable once a synced save returned)."""
        return self._hard

    def segment_count(self) -> int:
        return len(self._segments)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _cut_at(entries: list[Entry], first: int, index: int, term: int) -> tuple[list[Entry], int]:
    """Apply a snapshot at (index, term) to the log: keep what follows it if the log agrees there."""
    if index < first:
        return entries, first if entries else index + 1
    k = index - first
    if k < len(entries) and entries[k].term == term:
        return entries[k + 1:], index + 1
    return [], index + 1
