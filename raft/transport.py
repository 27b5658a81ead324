"""Raft messages between nodes over asyncio TCP: one frame per peer per Ready, pipelined, reconnecting.

Each node keeps one outbound connection to every peer and accepts theirs. `send` groups a Ready's
messages by destination and writes each group as one length-prefixed msgpack frame without waiting
for any reply (pipelining: the core's flow control bounds what is in flight). A message to a peer
that is unreachable (beyond a few frames queued while connecting), or whose socket buffer is already
full, is dropped: Raft retransmits by design, and a stalled peer must never make the leader buffer
without bound.

The partition filter drops every message to or from the blocked node ids, in both directions at this
node, so blocking {2, 3} on node 1 cuts node 1 off from 2 and 3 without touching them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable

from raft.codec import CodecError, FrameReader, decode_batch, encode_batch
from raft.types import Message

log = logging.getLogger("raft.transport")

MAX_BUFFERED = 8 * 1024 * 1024  # bytes queued to one peer beyond which new frames are dropped
MAX_PENDING_FRAMES = 64  # frames kept for a peer while connecting; beyond that they are dropped
BACKOFF_MIN = 0.02
BACKOFF_MAX = 0.5


class _Inbound(asyncio.Protocol):
    def __init__(self, transport_: Transport) -> None:
        self.t = transport_
        self.reader = FrameReader()
        self.conn: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.conn = transport  # type: ignore[assignment]
        self.t._inbound.add(self)
        _nodelay(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.t._inbound.discard(self)

    def data_received(self, data: bytes) -> None:
        try:
            for payload in self.reader.feed(data):
                self.t._deliver(decode_batch(payload))
        except CodecError as exc:
            log.warning("dropping a peer connection that sent a malformed frame: %s", exc)
            if self.conn is not None:
                self.conn.close()


class _Outbound(asyncio.Protocol):
    def __init__(self, peer: _Peer) -> None:
        self.peer = peer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        _nodelay(transport)

    def data_received(self, data: bytes) -> None:
        pass  # peers answer on their own outbound connection

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer.conn is not None and self.peer.conn.get_protocol() is self:
            self.peer.conn = None


class _Peer:
    def __init__(self, node_id: int) -> None:
        self.id = node_id
        self.conn: asyncio.Transport | None = None
        self.connecting: asyncio.Task | None = None
        self.next_attempt = 0.0
        self.backoff = BACKOFF_MIN
        self.pending: list[bytes] = []  # frames queued while the connection is being made


def _nodelay(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class Transport:
    """Moves `Message`s between this node and its peers; `on_messages` receives each inbound batch."""

    def __init__(self, node_id: int, address_of: Callable[[int], tuple[str, int]],
                 on_messages: Callable[[list[Message]], None]) -> None:
        self.id = node_id
        self.address_of = address_of
        self.on_messages = on_messages
        self.blocked: frozenset[int] = frozenset()
        self.dropped = 0  # messages dropped because a peer was blocked, down or backed up
        self._peers: dict[int, _Peer] = {}
        self._inbound: set[_Inbound] = set()
        self._server: asyncio.base_events.Server | None = None
        self._closed = False

    async def start(self) -> None:
        """Listen for peers on this node's own address."""
        host, port = self.address_of(self.id)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Inbound(self), host, port, reuse_address=True)

    def block(self, nodes: set[int] | frozenset[int]) -> None:
        """Partition this node from `nodes` (both directions) until `unblock()`."""
        self.blocked = frozenset(nodes)

    def unblock(self) -> None:
        self.blocked = frozenset()

    def _deliver(self, messages: list[Message]) -> None:
        if self.blocked:
            messages = [m for m in messages if m.frm not in self.blocked]
        if messages:
            self.on_messages(messages)

    def send(self, messages: list[Message]) -> None:
        """Queue `messages` for their destinations: one frame per destination, never blocking."""
        if not messages:
            return
        by_peer: dict[int, list[Message]] = {}
        for m in messages:
            by_peer.setdefault(m.to, []).append(m)
        for to, batch in by_peer.items():
            if to in self.blocked or to == self.id:
                self.dropped += len(batch)
                continue
            peer = self._peers.get(to)
            if peer is None:
                peer = self._peers[to] = _Peer(to)
            conn = peer.conn
            if conn is None or conn.is_closing():
                if len(peer.pending) < MAX_PENDING_FRAMES:
                    peer.pending.append(encode_batch(batch))  # sent as soon as the connection is up
                else:
                    self.dropped += len(batch)
                self._ensure_connecting(peer)
                continue
            if conn.get_write_buffer_size() > MAX_BUFFERED:
                self.dropped += len(batch)
                continue
            conn.write(encode_batch(batch))

    def _ensure_connecting(self, peer: _Peer) -> None:
        if self._closed or (peer.connecting is not None and not peer.connecting.done()):
            return
        peer.connecting = asyncio.get_running_loop().create_task(self._connect(peer))

    async def _connect(self, peer: _Peer) -> None:
        loop = asyncio.get_running_loop()
        delay = peer.next_attempt - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        host, port = self.address_of(peer.id)
        try:
            conn, _ = await loop.create_connection(lambda: _Outbound(peer), host, port)
        except OSError:
            peer.next_attempt = loop.time() + peer.backoff
            peer.backoff = min(peer.backoff * 2, BACKOFF_MAX)
            self.dropped += len(peer.pending)
            peer.pending.clear()
            return
        if self._closed:
            conn.close()
            return
        peer.conn = conn
        peer.backoff = BACKOFF_MIN
        for frame in peer.pending:
            conn.write(frame)
        peer.pending.clear()

    async def close(self) -> None:
        """Stop listening and close every connection."""
        self._closed = True
        if self._server is not None:
            self._server.close()
        for peer in self._peers.values():
            if peer.connecting is not None:
                peer.connecting.cancel()
            if peer.conn is not None:
                peer.conn.close()
        for inbound in list(self._inbound):
            if inbound.conn is not None:
                inbound.conn.close()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
