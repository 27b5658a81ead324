"""The node's Ready processing: nothing is acknowledged to a peer before it is fsynced."""

from __future__ import annotations

import asyncio

from raft.cluster import free_base_port
from raft.node import NodeConfig, RaftNode
from raft.types import Entry, Message, MsgType


async def recording_node(tmp_path) -> tuple[RaftNode, list[tuple]]:
    node = RaftNode(NodeConfig(id=2, nodes=3, data_dir=str(tmp_path), base_port=free_base_port(3),
                               election_tick=1000))
    events: list[tuple] = []
    save, send = node.storage.save, node.transport.send

    def recording_save(hard_state, entries, snapshot, sync):
        save(hard_state, entries, snapshot, sync)
        events.append(("saved", sync, hard_state, [e.index for e in entries]))

    def recording_send(messages):
        events.append(("sent", [m.type for m in messages]))
        send(messages)

    node.storage.save = recording_save
    node.transport.send = recording_send
    await node.start()
    return node, events


async def wait_for(events: list[tuple], kind: MsgType) -> None:
    for _ in range(200):
        if any(e[0] == "sent" and kind in e[1] for e in events):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"no {kind.name} sent; events: {events}")


async def test_a_follower_acks_an_append_only_after_the_entries_are_fsynced(tmp_path):
    node, events = await recording_node(tmp_path)
    try:
        node.receive([Message(MsgType.APPEND, 1, 2, 1, log_term=0, index=0,
                                   entries=(Entry(1, 1), Entry(1, 2, data=b"x")), commit=0)])
        await wait_for(events, MsgType.APPEND_RESP)
        saved = next(i for i, e in enumerate(events) if e[0] == "saved" and e[3] == [1, 2])
        acked = next(i for i, e in enumerate(events) if e[0] == "sent" and MsgType.APPEND_RESP in e[1])
        assert events[saved][1] is True  # fsynced
        assert saved < acked
    finally:
        await node.stop()


async def test_a_vote_is_granted_only_after_term_and_vote_are_durable(tmp_path):
    node, events = await recording_node(tmp_path)
    try:
        node.receive([Message(MsgType.VOTE, 3, 2, 5, log_term=0, index=0)])
        await wait_for(events, MsgType.VOTE_RESP)
        granted = next(i for i, e in enumerate(events) if e[0] == "sent" and MsgType.VOTE_RESP in e[1])
        durable = [i for i, e in enumerate(events[:granted])
                   if e[0] == "saved" and e[1] and e[2] is not None and (e[2].term, e[2].vote) == (5, 3)]
        assert durable, events
        assert node.storage.hard_state.vote == 3
    finally:
        await node.stop()


def test_a_restarted_node_never_reuses_a_read_context(tmp_path):
    """The leader keys pending reads by (sender, context) (thesis §6.4): a context reused after a restart could
    be confirmed by a heartbeat round older than the read."""
    cfg = NodeConfig(id=2, nodes=3, data_dir=str(tmp_path), base_port=free_base_port(3))
    seen: list[bytes] = []
    for _ in range(2):  # the same node, started twice
        node = RaftNode(cfg)
        seen += [node.next_read_context() for _ in range(3)]
        node.storage.close()
    assert len(set(seen)) == len(seen)
