"""Where the coordinator keeps its records: one interface, two stores.

- `RaftStore` (the default): the records are the state machine of a Raft group formed by the coordinator
  replicas themselves (`raft/`), as in Seata's Raft mode. A change is a command in the log; the leader drives.
- `EtcdStore` (`TXLAB_COORDINATOR_STORE=etcd://host:port`, in `services/coordinator/etcd.py`): the records are
  keys in etcd, leadership is an etcd lease, and a change is a transaction checked against the key's revision.

Either way the records are changed only by `TxnBook.apply`, and only by the leader, which must first call
`catch_up()` in its leadership so that its copy holds everything committed before it.
"""

from __future__ import annotations

import argparse
import socket
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import msgpack

from raft.core import NotLeader as RaftNotLeader
from raft.node import CommitUnknown, NodeConfig, RaftNode
from services.common.settings import Settings
from services.coordinator.model import TxnBook


class NotLeader(Exception):
    """This replica does not lead: `leader` is the URL of the one that does, or None during an election."""

    def __init__(self, leader: str | None) -> None:
        super().__init__(f"not the leader (leader: {leader or 'unknown'})")
        self.leader = leader


class OutcomeUnknown(Exception):
    """A change was proposed but this replica cannot tell whether it took effect: read the record again."""


class Store(Protocol):
    book: TxnBook  # the records as this replica knows them: complete on a leader after `catch_up`
    events: Iterable[dict[str, Any]]  # this replica's recent role changes (`GET /raft/events`)

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    @property
    def leading(self) -> int | None:
        """The current leadership's number (a term, or a lease) when this replica leads, else None."""

    def leader_url(self) -> str | None: ...

    async def catch_up(self) -> None:
        """Make `book` hold everything committed before now; raises NotLeader."""

    async def propose(self, cmd: dict[str, Any]) -> str:
        """Apply one command through the store (raises NotLeader, OutcomeUnknown); its outcome."""

    def status(self) -> dict[str, Any]:
        """`GET /raft/status`: id, role, term, leader, commit, applied, peers, ..."""

    def isolate(self, others: bool) -> None:
        """Cut this replica off from the others (True) or heal it (False)."""


class TxnMachine:
    """The Raft state machine: commands are msgpack-encoded `TxnBook` commands."""

    def __init__(self) -> None:
        self.book = TxnBook()

    def apply(self, command: bytes) -> str:
        try:
            cmd = msgpack.unpackb(command, raw=False)
        except (ValueError, TypeError, msgpack.UnpackException):
            return "malformed: not msgpack"
        return self.book.apply(cmd)

    def snapshot(self) -> bytes:
        return msgpack.packb(self.book.dump(), use_bin_type=True)

    def restore(self, blob: bytes) -> None:
        self.book.load(msgpack.unpackb(blob, raw=False) if blob else [])


class RaftStore:
    def __init__(self, settings: Settings, node_id: int, data_dir: Path | None = None) -> None:
        self.settings = settings
        self.node_id = node_id
        self.cfg = NodeConfig(id=node_id, nodes=settings.coordinator_nodes, host=settings.host,
                              data_dir=str(data_dir or settings.data_dir / "coordinator"),
                              base_port=settings.coordinator_port, raft_base_port=settings.coordinator_raft_port,
                              snapshot_every=2_000, request_timeout=3.0)
        self.machine = TxnMachine()
        self.node: RaftNode | None = None
        self._caught_up_term = 0

    @property
    def book(self) -> TxnBook:
        return self.machine.book

    @property
    def events(self) -> Iterable[dict[str, Any]]:
        return self.node.events if self.node else ()

    async def start(self) -> None:
        self.node = RaftNode(self.cfg, self.machine)
        await self.node.start()

    async def close(self) -> None:
        if self.node is not None:
            await self.node.stop()

    @property
    def leading(self) -> int | None:
        node = self.node
        if node is None or not node.is_leader:
            return None
        return node.core.term

    def leader_url(self) -> str | None:
        leader = self.node.core.leader if self.node else 0
        return self.settings.url(f"coordinator-{leader}") if leader else None

    async def catch_up(self) -> None:
        assert self.node is not None
        term = self.leading
        if term is None:
            raise NotLeader(self.leader_url())
        if self._caught_up_term == term:
            return
        try:
            await self.node.read_barrier()  # everything committed before this leadership is applied here
        except RaftNotLeader:
            raise NotLeader(self.leader_url()) from None
        except CommitUnknown as exc:
            raise NotLeader(None) from exc
        self._caught_up_term = term

    async def propose(self, cmd: dict[str, Any]) -> str:
        assert self.node is not None
        if not self.node.is_leader:
            raise NotLeader(self.leader_url())
        try:
            command = msgpack.packb(cmd, use_bin_type=True)
        except (OverflowError, ValueError, TypeError) as exc:  # an integer beyond 64 bits, text that is not Unicode
            return f"malformed: cannot be kept in the log ({exc})"
        try:
            return await self.node.submit(command)
        except RaftNotLeader:
            raise NotLeader(self.leader_url()) from None
        except CommitUnknown as exc:
            raise OutcomeUnknown(str(exc)) from exc

    def status(self) -> dict[str, Any]:
        assert self.node is not None
        return {**self.node.status(), "store": "raft", "transactions": len(self.book.records)}

    def isolate(self, others: bool) -> None:
        assert self.node is not None
        if others:
            self.node.transport.block({i for i in range(1, self.cfg.nodes + 1) if i != self.node_id})
        else:
            self.node.transport.unblock()


def store_spec(value: str) -> str:
    """`--store` of a command line: `raft`, or `etcd://host:port` of an etcd that answers now; otherwise a one-line
    error (argparse prints it with the usage and exits 2), not a traceback from deep inside the run."""
    if value == "raft":
        return value
    parts = urlsplit(value)
    try:
        port = parts.port or 2379
    except ValueError:
        port = None
    if parts.scheme != "etcd" or not parts.hostname or port is None or parts.path not in ("", "/"):
        raise argparse.ArgumentTypeError(f"use raft or etcd://host:port, not {value!r}")
    try:
        with socket.create_connection((parts.hostname, port), timeout=2):
            pass
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"no etcd answers at {parts.hostname}:{port} ({exc.strerror or exc}); "
                                         "scripts/local-services starts one on 127.0.0.1:2379") from None
    return value


def open_store(settings: Settings, node_id: int) -> Store:
    """The store `TXLAB_COORDINATOR_STORE` names: `raft` (default) or `etcd://host:port`."""
    spec = settings.coordinator_store
    if spec == "raft":
        return RaftStore(settings, node_id)
    if spec.startswith("etcd://"):
        from services.coordinator.etcd import EtcdStore

        return EtcdStore(settings, node_id)
    raise ValueError(f"TXLAB_COORDINATOR_STORE must be raft or etcd://host:port, not {spec!r}")

