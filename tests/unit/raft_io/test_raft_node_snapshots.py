"""Taking a snapshot of a large state machine: the leader's heartbeats and writes keep flowing meanwhile
(shown by holding each slow step of the snapshot until they did, not by timing them), and the snapshot
holds exactly the state at its index while later entries go on being applied."""

from __future__ import annotations

import asyncio
import itertools
import os
import threading
import time
from dataclasses import dataclass

import raft.node
from raft.cluster import free_base_port
from raft.core import NotLeader
from raft.kv import KVStateMachine, Op, encode_command, encode_register
from raft.node import CommitUnknown, NodeConfig, RaftNode, snapshot_view
from raft.storage import Storage
from raft.types import EntryType, MsgType
from tests.polling import eventually

STATE_BYTES = 50 * 1024 * 1024


def fill(kv: KVStateMachine, total: int = STATE_BYTES, value_size: int = 500) -> None:
    """Put about `total` bytes of distinct values in the machine directly: only its size matters here."""
    kv.data.update((f"bulk-{i:08d}", f"{i:08d}".ljust(value_size, "x")) for i in range(total // value_size))


class Gate:
    """Holds a step of the snapshot until `release` is set (at most 10 s): a step lasting as long as a test
    needs. A step run on the event loop would stop the loop for all that time."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.left = threading.Event()

    @property
    def holding(self) -> bool:
        return self.entered.is_set() and not self.left.is_set()

    def hold(self) -> None:
        self.entered.set()
        self.release.wait(10)
        self.left.set()


class HeldSnapshotFsync(Gate):
    """Holds every fsync of a snapshot's temp file: a snapshot file write that lasts as long as a test needs."""

    def __init__(self, monkeypatch) -> None:
        super().__init__()
        real_sync = os.fdatasync

        def fdatasync(fd: int) -> None:
            if os.readlink(f"/proc/self/fd/{fd}").endswith(".snap.tmp"):
                self.hold()
            real_sync(fd)

        monkeypatch.setattr(os, "fdatasync", fdatasync)


class HeldSerialisation(Gate):
    """Holds the serialisation of every snapshot view."""

    def __init__(self, monkeypatch) -> None:
        super().__init__()
        real_view = raft.node.snapshot_view

        def view(machine):
            serialise = real_view(machine)

            def held() -> bytes:
                self.hold()
                return serialise()

            return held

        monkeypatch.setattr(raft.node, "snapshot_view", view)


@dataclass
class WhileHeld:
    heartbeats: int = 0  # heartbeat rounds the leader sent while the snapshot step was held
    writes: int = 0  # writes it committed meanwhile
    still_leader: bool = False


async def leader_while_its_snapshot_is_held(tmp_path, gate: Gate, writers: int) -> WhileHeld:
    """Run a 3-node cluster whose leader holds 50 MB and takes a snapshot, hold one step of that snapshot
    until the leader has sent five heartbeat rounds, with `writers` clients writing all along; report what
    the leader did meanwhile (it can only send heartbeats if the held step is not on its event loop)."""
    base = free_base_port(3)
    # Node 1 leads and snapshots; the followers never campaign nor snapshot, so only its behaviour is seen.
    nodes = [RaftNode(NodeConfig(id=i, nodes=3, data_dir=str(tmp_path), base_port=base,
                                 election_tick=15 if i == 1 else 1000,
                                 snapshot_every=50 if i == 1 else 10**9)) for i in (1, 2, 3)]
    leader = nodes[0]
    seen = WhileHeld()
    for n in nodes:
        await n.start()
    try:
        leader.campaign()
        await eventually(lambda: leader.is_leader)
        fill(leader.machine)
        send = leader.transport.send

        def recording_send(messages):
            if gate.holding and any(m.type is MsgType.HEARTBEAT for m in messages):
                seen.heartbeats += 1
                if seen.heartbeats >= 5:
                    gate.release.set()
            send(messages)

        leader.transport.send = recording_send
        done = asyncio.Event()

        async def write(client: int) -> None:
            for seq in itertools.count():
                if done.is_set():
                    return
                try:
                    await leader.submit(encode_command(Op.PUT, f"w{client}-{seq % 10}", str(seq), now=time.time()))
                except (NotLeader, CommitUnknown):
                    return  # leadership lost: reported below
                seen.writes += gate.holding

        load = [asyncio.create_task(write(c)) for c in range(writers)]
        i = 0
        while leader.applied < leader.cfg.snapshot_every:  # the last of these triggers the snapshot
            await leader.submit(encode_command(Op.PUT, f"k{i}", "1", now=time.time()))
            i += 1
        await eventually(lambda: leader.snapshot_index > 0)
        done.set()
        await asyncio.gather(*load)
        assert gate.entered.is_set(), "the snapshot step was never reached"
        assert len(leader.core.snapshot.data) > STATE_BYTES
        seen.still_leader = leader.is_leader
        return seen
    finally:
        gate.release.set()
        for n in nodes:
            await n.stop()


async def test_heartbeats_keep_flowing_while_a_50_mb_snapshot_is_serialised(tmp_path, monkeypatch):
    seen = await leader_while_its_snapshot_is_held(tmp_path, HeldSerialisation(monkeypatch), writers=0)
    assert seen.heartbeats >= 5 and seen.still_leader


async def test_heartbeats_and_writes_go_on_while_a_50_mb_snapshot_file_is_written(tmp_path, monkeypatch):
    # Every write needs a log fsync: none may wait behind the snapshot file, or heartbeats wait too.
    seen = await leader_while_its_snapshot_is_held(tmp_path, HeldSnapshotFsync(monkeypatch), writers=4)
    assert seen.heartbeats >= 5 and seen.writes > 0 and seen.still_leader


async def test_a_write_commits_while_the_snapshot_file_is_still_being_written(tmp_path, monkeypatch):
    node = RaftNode(NodeConfig(id=1, nodes=1, data_dir=str(tmp_path), base_port=free_base_port(1),
                               snapshot_every=50))
    held = HeldSnapshotFsync(monkeypatch)
    await node.start()
    try:
        node.campaign()
        await eventually(lambda: node.is_leader)
        i = 0
        while not held.entered.is_set():  # the 50th applied entry starts a snapshot
            await node.submit(encode_command(Op.PUT, f"k{i}", "1", now=time.time()))
            i += 1
        await asyncio.wait_for(node.submit(encode_command(Op.PUT, "during", "1", now=time.time())), 2.0)
        assert node.snapshot_index == 0  # the snapshot file was still being written
        held.release.set()
        await eventually(lambda: node.snapshot_index > 0)
    finally:
        held.release.set()
        await node.stop()
    _, recovered = Storage.open(node.cfg.node_dir)
    assert recovered.snapshot is not None
    kv = KVStateMachine()
    kv.restore(recovered.snapshot.data)
    for e in recovered.entries:
        if e.type is EntryType.NORMAL and e.data:
            kv.apply(e.data)
    assert kv.data["during"] == "1"  # the write acknowledged meanwhile survives the restart


async def test_a_snapshot_holds_exactly_the_state_at_its_index_while_later_entries_are_applied(tmp_path):
    node = RaftNode(NodeConfig(id=1, nodes=1, data_dir=str(tmp_path), base_port=free_base_port(1),
                               snapshot_every=50))
    await node.start()
    proposed: dict[int, bytes] = {}
    applied_when_durable: list[tuple[int, int]] = []  # (snapshot index, applied index once it is on disk)
    try:
        node.campaign()
        await eventually(lambda: node.is_leader)
        fill(node.machine, total=20 * 1024 * 1024)
        propose, record_snapshot = node.core.propose, node.storage.record_snapshot

        def recording_propose(data: bytes) -> int:
            proposed[index := propose(data)] = data
            return index

        def recording_record_snapshot(snap) -> None:
            record_snapshot(snap)
            applied_when_durable.append((snap.index, node.applied))

        node.core.propose, node.storage.record_snapshot = recording_propose, recording_record_snapshot

        async def write(client: int) -> None:
            session = (await node.submit(encode_register(now=time.time()))).session
            seq = 0
            while not applied_when_durable:
                seq += 1
                await node.submit(encode_command(Op.PUT, f"c{client}-{seq % 7}", str(seq), None, session, seq,
                                                 now=time.time()))

        await asyncio.gather(*(write(c) for c in range(4)))
    finally:
        await node.stop()
    index, applied = applied_when_durable[0]
    assert applied > index  # entries were applied while the snapshot was serialised and written
    _, recovered = Storage.open(node.cfg.node_dir)
    snap = recovered.snapshot
    assert snap is not None and snap.index >= index
    expected = KVStateMachine()
    fill(expected, total=20 * 1024 * 1024)
    for i in sorted(i for i in proposed if i <= snap.index):
        expected.apply(proposed[i])
    restored = KVStateMachine()
    restored.restore(snap.data)
    assert restored.data == expected.data
    assert restored.sessions == expected.sessions
    assert any(i > snap.index for i in proposed)  # so the comparison does tell the index apart


def test_a_snapshot_view_serialises_the_state_when_taken_not_when_run():
    kv = KVStateMachine()
    one, two = (kv.apply(encode_register(now=10.0 + i)).session for i in range(2))
    kv.apply(encode_command(Op.PUT, "ключ", '{"a":[1,2.5,null]}', None, one, 1, now=12.0))
    kv.apply(encode_command(Op.PUT, "k" * 300, "x" * 70_000, now=12.5))
    kv.apply(encode_command(Op.CAS, "absent", "1", "null", two, 9, now=13.0))
    before = kv.snapshot()
    view = snapshot_view(kv)
    kv.apply(encode_command(Op.DELETE, "ключ", None, None, one, 2, now=14.0))
    kv.apply(encode_register(now=15.0))
    assert view() == before
    restored = KVStateMachine()
    restored.restore(before)
    assert (restored.data, restored.sessions, restored.registered, restored.clock) != (kv.data, kv.sessions,
                                                                                        kv.registered, kv.clock)
