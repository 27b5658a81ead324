"""The file operations Raft's storage needs, behind one small interface.

`OsDisk` is the real one. The simulator passes `raft.testing.simdisk.SimDisk`, which keeps files in
memory and, at a simulated crash, keeps only what a real disk would have kept: the same `Storage` code
then runs against torn writes, zero-filled tails, flipped bits and an fsync that lies.

The operations are the POSIX ones the log relies on, with the same durability meaning: data written
through a handle is durable once `sync` returns for it; a name created, renamed or removed in a
directory is durable once `sync_dir` returns for that directory.
"""

from __future__ import annotations

import contextlib
import os
from typing import Protocol


class Disk(Protocol):
    def listdir(self, path: str) -> list[str]: ...

    def read(self, path: str) -> bytes:
        """The whole file; FileNotFoundError if there is none."""

    def exists(self, path: str) -> bool: ...

    def mkdir(self, path: str) -> None:
        """Create a directory; FileExistsError if it exists."""

    def sync_dir(self, path: str) -> None: ...

    def open_append(self, path: str) -> int:
        """A handle that appends to `path`, created if missing."""

    def create(self, path: str) -> int:
        """A handle to `path`, created or emptied."""

    def write(self, fd: int, data: bytes | memoryview) -> None:
        """Write all of `data`."""

    def sync(self, fd: int) -> None:
        """Make the handle's data durable (fdatasync)."""

    def size(self, fd: int) -> int: ...

    def close(self, fd: int) -> None: ...

    def truncate(self, path: str, size: int) -> None:
        """Cut `path` to `size` bytes, durably."""

    def rename(self, src: str, dst: str) -> None:
        """Replace `dst` with `src` atomically."""

    def unlink(self, path: str) -> None: ...


class OsDisk:
    """The local file system."""

    def listdir(self, path: str) -> list[str]:
        return os.listdir(path)

    def read(self, path: str) -> bytes:
        with open(path, "rb") as f:
            return f.read()

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def mkdir(self, path: str) -> None:
        os.mkdir(path)

    def sync_dir(self, path: str) -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def open_append(self, path: str) -> int:
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def create(self, path: str) -> int:
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)

    def write(self, fd: int, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]

    def sync(self, fd: int) -> None:
        os.fdatasync(fd)

    def size(self, fd: int) -> int:
        return os.fstat(fd).st_size

    def close(self, fd: int) -> None:
        os.close(fd)

    def truncate(self, path: str, size: int) -> None:
        with open(path, "r+b") as f:
            f.truncate(size)
            os.fsync(f.fileno())

    def rename(self, src: str, dst: str) -> None:
        os.replace(src, dst)

    def unlink(self, path: str) -> None:
        os.unlink(path)


OS_DISK = OsDisk()


def make_dir_durable(path: str, disk: Disk = OS_DISK) -> None:
    """Create `path` (and missing parents) and sync its parent, even when it already exists: the run
    that created it may have died before the parent was synced."""
    parent = os.path.dirname(os.path.abspath(path))
    if not disk.exists(parent):
        make_dir_durable(parent, disk)
    with contextlib.suppress(FileExistsError):
        disk.mkdir(path)
    disk.sync_dir(parent)


def write_atomically(path: str, *chunks: bytes, disk: Disk = OS_DISK) -> None:
    """Replace `path` with the concatenated `chunks` so that a crash leaves either the old or the new
    content."""
    tmp = path + ".tmp"
    fd = disk.create(tmp)
    try:
        for chunk in chunks:
            disk.write(fd, chunk)
        disk.sync(fd)
    finally:
        disk.close(fd)
    disk.rename(tmp, path)
    disk.sync_dir(os.path.dirname(path) or ".")
