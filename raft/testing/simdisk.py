"""A simulated disk for `raft.storage.Storage`: files in memory that a crash treats as a real disk would.

What reads see (the page cache) and what survives a crash are kept apart. Data written through a handle
survives only once `sync` returned for it; a name created, renamed or removed survives only once its
directory was synced; a directory, once its parent was. At `crash()`:

- a file's unsynced appended bytes are torn at a sector boundary: the sectors before a random cut reach
  the disk, the rest do not. Half the time the file keeps its grown length, and what did not reach the
  disk reads back as zeros (a zero-filled tail, as ext4 `data=writeback` and others leave it);
- a file rewritten since its last sync comes back as it was then;
- names and directories not yet synced are gone (and whatever lived only under them).

Two more faults: `flip_bit` damages a byte at rest (bit rot, a bad sector returning wrong data) in the
page cache and on the disk alike, and `lying_fsync` is the share of `sync` calls that return without
making anything durable (a disk write cache that ignores flushes).

Every choice comes from the `random.Random` passed in, so a simulation seed replays the same disk.
"""

from __future__ import annotations

import itertools
import os
import random
from dataclasses import dataclass, field

SECTOR = 512


class DiskCrash(Exception):
    """Raised by the operation at which a planned crash happens (see `crash_after`)."""


@dataclass(eq=False)
class _Inode:
    data: bytearray = field(default_factory=bytearray)  # what reads see
    durable: bytes = b""  # what a crash keeps (before tearing what was appended since)


class SimDisk:
    def __init__(self, rng: random.Random, lying_fsync: float = 0.0) -> None:
        self.rng = rng
        self.lying_fsync = lying_fsync
        self.dirs: set[str] = {"/"}
        self.durable_dirs: set[str] = {"/"}
        self.names: dict[str, _Inode] = {}
        self.durable_names: dict[str, _Inode] = {}
        self._handles: dict[int, _Inode] = {}
        self._next_handle = itertools.count(3)
        self._ops_left: int | None = None
        self.lies = 0  # syncs that returned without making anything durable

    # --------------------------------------------------------------------------- faults
    def crash_after(self, ops: int | None) -> None:
        """Crash at the `ops`-th mutating operation from now (it raises DiskCrash and does nothing);
        None cancels."""
        self._ops_left = ops

    def _mutating(self) -> None:
        if self._ops_left is not None:
            self._ops_left -= 1
            if self._ops_left <= 0:
                self._ops_left = None
                raise DiskCrash()

    def crash(self) -> None:
        """Power loss: keep what a disk keeps; every handle is gone."""
        self._ops_left = None
        self._handles.clear()
        self.dirs = {d for d in self.durable_dirs if self._survives(d)}
        kept: dict[str, _Inode] = {}
        for path, ino in self.durable_names.items():
            if os.path.dirname(path) in self.dirs:
                kept[path] = ino
        for ino in set(kept.values()):
            ino.durable = self._after_crash(ino)
            ino.data = bytearray(ino.durable)
        self.names = dict(kept)
        self.durable_names = dict(kept)
        self.durable_dirs = set(self.dirs)

    def _survives(self, d: str) -> bool:
        while d != "/":
            if d not in self.durable_dirs:
                return False
            d = os.path.dirname(d)
        return True

    def _after_crash(self, ino: _Inode) -> bytes:
        data, durable = bytes(ino.data), ino.durable
        if not data.startswith(durable) or len(data) == len(durable):
            return durable  # rewritten since its last sync (or nothing new): as it was then
        cuts = [len(durable), *range((len(durable) // SECTOR + 1) * SECTOR, len(data), SECTOR), len(data)]
        cut = self.rng.choice(cuts)
        if cut < len(data) and self.rng.random() < 0.5:
            return data[:cut] + bytes(len(data) - cut)  # grown, but the rest never reached the disk
        return data[:cut]

    def flip_bit(self, path: str, offset: int, bit: int) -> None:
        """Damage one bit of a file at rest, on disk and in the page cache alike."""
        ino = self.names[path]
        ino.data[offset] ^= 1 << bit
        durable = bytearray(ino.durable)
        if offset < len(durable):
            durable[offset] ^= 1 << bit
            ino.durable = bytes(durable)

    def files(self) -> list[str]:
        return sorted(self.names)

    def size_of(self, path: str) -> int:
        return len(self.names[path].data)

    def all_synced(self) -> bool:
        """Whether every file and directory there is, with all its data, would survive a crash (names
        removed but not yet synced may come back; that is no loss)."""
        return self.dirs <= self.durable_dirs and all(
            self.durable_names.get(p) is ino and len(ino.data) == len(ino.durable) and ino.data == ino.durable
            for p, ino in self.names.items())

    # --------------------------------------------------------------------------- raft.disk.Disk
    def listdir(self, path: str) -> list[str]:
        if path not in self.dirs:
            raise FileNotFoundError(path)
        return [os.path.basename(p) for p in (*self.names, *self.dirs) if p != "/" and os.path.dirname(p) == path]

    def read(self, path: str) -> bytes:
        ino = self.names.get(path)
        if ino is None:
            raise FileNotFoundError(path)
        return bytes(ino.data)

    def exists(self, path: str) -> bool:
        return path in self.names or path in self.dirs

    def mkdir(self, path: str) -> None:
        if self.exists(path):
            raise FileExistsError(path)
        if os.path.dirname(path) not in self.dirs:
            raise FileNotFoundError(path)
        self._mutating()
        self.dirs.add(path)

    def sync_dir(self, path: str) -> None:
        self._mutating()
        if self._lies():
            return
        for p in [p for p in self.durable_names if os.path.dirname(p) == path]:
            del self.durable_names[p]
        for p, ino in self.names.items():
            if os.path.dirname(p) == path:
                self.durable_names[p] = ino
        self.durable_dirs = {d for d in self.durable_dirs if os.path.dirname(d) != path or d in self.dirs}
        self.durable_dirs |= {d for d in self.dirs if d != "/" and os.path.dirname(d) == path}

    def open_append(self, path: str) -> int:
        if os.path.dirname(path) not in self.dirs:
            raise FileNotFoundError(path)
        if path not in self.names:
            self._mutating()
            self.names[path] = _Inode()
        h = next(self._next_handle)
        self._handles[h] = self.names[path]
        return h

    def create(self, path: str) -> int:
        if os.path.dirname(path) not in self.dirs:
            raise FileNotFoundError(path)
        self._mutating()
        self.names[path] = ino = _Inode()
        h = next(self._next_handle)
        self._handles[h] = ino
        return h

    def write(self, fd: int, data: bytes | memoryview) -> None:
        ino = self._handles[fd]
        self._mutating()
        ino.data += data

    def sync(self, fd: int) -> None:
        ino = self._handles[fd]
        self._mutating()
        if not self._lies():
            ino.durable = bytes(ino.data)

    def _lies(self) -> bool:
        if self.lying_fsync and self.rng.random() < self.lying_fsync:
            self.lies += 1
            return True
        return False

    def size(self, fd: int) -> int:
        return len(self._handles[fd].data)

    def close(self, fd: int) -> None:
        self._handles.pop(fd)

    def truncate(self, path: str, size: int) -> None:
        ino = self.names[path]
        self._mutating()
        del ino.data[size:]
        ino.durable = bytes(ino.data)

    def rename(self, src: str, dst: str) -> None:
        if src not in self.names:
            raise FileNotFoundError(src)
        self._mutating()
        self.names[dst] = self.names.pop(src)

    def unlink(self, path: str) -> None:
        if path not in self.names:
            raise FileNotFoundError(path)
        self._mutating()
        del self.names[path]
