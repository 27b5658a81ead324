"""The TCP transport between two in-process nodes: batching, reconnect, the partition filter."""

from __future__ import annotations

import asyncio

from raft.cluster import free_base_port
from raft.transport import Transport
from raft.types import Message, MsgType


def pair():
    base = free_base_port(2)
    inbox: dict[int, list[Message]] = {1: [], 2: []}
    frames: dict[int, int] = {1: 0, 2: 0}

    def receiver(i: int):
        def on(messages: list[Message]) -> None:
            frames[i] += 1
            inbox[i].extend(messages)
        return on

    t = {i: Transport(i, lambda n: ("127.0.0.1", base + 100 + n - 1), receiver(i)) for i in (1, 2)}
    return t, inbox, frames


async def until(cond, within: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + within
    while not cond():
        assert loop.time() < end, "condition not reached in time"
        await asyncio.sleep(0.01)


def hb(frm: int, to: int, term: int) -> Message:
    return Message(MsgType.HEARTBEAT, frm, to, term)


async def test_one_ready_worth_of_messages_arrives_in_order_as_one_frame():
    t, inbox, frames = pair()
    await t[1].start()
    await t[2].start()
    try:
        t[1].send([hb(1, 2, 0)])  # opens the connection (queued while connecting)
        await until(lambda: len(inbox[2]) == 1)
        frames[2] = 0
        t[1].send([hb(1, 2, n) for n in range(1, 51)])
        await until(lambda: len(inbox[2]) == 51)
        assert [m.term for m in inbox[2]] == list(range(51))
        assert frames[2] == 1
    finally:
        await t[1].close()
        await t[2].close()


async def test_messages_to_a_peer_that_comes_up_later_flow_after_reconnect():
    t, inbox, _ = pair()
    await t[1].start()
    try:
        t[1].send([hb(1, 2, 1)])  # peer 2 is down: dropped, a reconnect with backoff begins
        await asyncio.sleep(0.1)
        await t[2].start()

        async def keep_sending() -> None:
            while not inbox[2]:
                t[1].send([hb(1, 2, 2)])
                await asyncio.sleep(0.02)

        await asyncio.wait_for(keep_sending(), 5)
    finally:
        await t[1].close()
        await t[2].close()


async def test_a_blocked_node_neither_sends_to_nor_hears_from_the_other():
    t, inbox, _ = pair()
    await t[1].start()
    await t[2].start()
    try:
        t[2].send([hb(2, 1, 0)])
        await until(lambda: len(inbox[1]) == 1)
        t[1].block({2})
        t[1].send([hb(1, 2, 5)])
        t[2].send([hb(2, 1, 6)])
        await asyncio.sleep(0.2)
        assert inbox[2] == [] and len(inbox[1]) == 1
        t[1].unblock()
        t[2].send([hb(2, 1, 7)])
        await until(lambda: len(inbox[1]) == 2)
        assert inbox[1][-1].term == 7
    finally:
        await t[1].close()
        await t[2].close()
