"""The coordinator's records in etcd (`TXLAB_COORDINATOR_STORE=etcd://127.0.0.1:2379`), for users who run etcd.

Keys, under `/txlab/<db_prefix>/coordinator/`:
- `leader`: the leading replica (`{"node", "url"}`), attached to its lease;
- `txn/<gid>`: one record per global transaction, as JSON: the same record the Raft store keeps.

**Leadership** is etcd's election recipe, reduced to its core: each replica holds a lease that it keeps
alive, and campaigns with a transaction that creates `leader` under its lease only if the key does not
exist (create revision 0). The winner's leadership is numbered by that key's create revision. If the
leader stops keeping its lease alive (it died, or was cut off), etcd deletes the key when the lease
expires and another replica's campaign succeeds.

**Every write is fenced and checked**: a change is one etcd transaction that succeeds only if `leader` still
has the create revision of this leadership *and* the record's mod revision is the one this replica read.
So a deposed leader that has not noticed yet cannot write, and no write is lost to a concurrent one. The
change itself is computed by the same `TxnBook.apply` as in the Raft store, on a copy of the record.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import logging
import time
from typing import Any
from urllib.parse import urlsplit

import aetcd
import aetcd.exceptions
import aetcd.utils

from services.common.settings import Settings
from services.coordinator.model import TxnBook
from services.coordinator.store import NotLeader, OutcomeUnknown

log = logging.getLogger("txlab.coordinator.etcd")

LEASE_TTL = 2  # seconds: a dead leader is replaced within about this long (etcd keeps at least 1.5 s)
POLL_SECONDS = 0.1


def _endpoint(settings: Settings) -> tuple[str, int]:
    parts = urlsplit(settings.coordinator_store)
    if parts.scheme != "etcd" or not parts.hostname:
        raise ValueError(f"TXLAB_COORDINATOR_STORE must look like etcd://host:port, not {settings.coordinator_store!r}")
    return parts.hostname, parts.port or 2379


def key_prefix(settings: Settings) -> bytes:
    return f"/txlab/{settings.db_prefix}/coordinator/".encode()


class EtcdStore:
    def __init__(self, settings: Settings, node_id: int) -> None:
        self.settings = settings
        self.node_id = node_id
        self.url = settings.url(f"coordinator-{node_id}")
        host, port = _endpoint(settings)
        # every record is read at once by a new leader: no limit on the size of a reply
        self.client = aetcd.Client(host=host, port=port, timeout=5,
                                   options={"grpc.max_receive_message_length": -1})
        self.prefix = key_prefix(settings)
        self.leader_key = self.prefix + b"leader"
        self.book = TxnBook()
        self.revisions: dict[str, int] = {}  # gid -> mod revision of its key, as this leader last read or wrote it
        self._locks: dict[str, list[Any]] = {}  # gid -> [lock, changes waiting or running]
        self._lease: Any = None
        self._leading: int | None = None  # the create revision of our leader key while we lead
        self._leader: dict[str, Any] | None = None  # the leader key's value, as last seen
        self._caught_up: int | None = None
        self._isolated = False
        self._revision = 0  # the newest etcd revision seen
        self._task: asyncio.Task[None] | None = None
        self.events: list[dict[str, Any]] = []

    # ---------------------------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        self._task = asyncio.create_task(self._campaign(), name="etcd-campaign")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._lease is not None and self._leading is not None:
            with contextlib.suppress(Exception):  # hand leadership over at once rather than after the TTL
                await self.client.revoke_lease(self._lease.id)
        with contextlib.suppress(Exception):
            await self.client.close()

    def _event(self, kind: str, **fields: Any) -> None:
        self.events.append({"seq": len(self.events) + 1, "t": time.time(), "node": self.node_id, "kind": kind,
                            **fields})
        del self.events[:-200]

    async def _campaign(self) -> None:
        """Keep a lease alive; campaign whenever there is no leader; notice when this leadership ends."""
        last_refresh = 0.0
        while True:
            try:
                if self._isolated:
                    self._step_down("cut off from etcd")
                    await asyncio.sleep(POLL_SECONDS)
                    continue
                if self._lease is None:
                    self._lease = await self.client.lease(LEASE_TTL)
                    last_refresh = time.monotonic()
                if time.monotonic() - last_refresh > LEASE_TTL / 3:
                    reply = await self.client.refresh_lease(self._lease.id)
                    if reply is None or reply.TTL <= 0:
                        raise LookupError("the lease expired")
                    last_refresh = time.monotonic()
                current = await self.client.get(self.leader_key)
                if current is None:
                    ok, _ = await self.client.transaction(
                        compare=[self.client.transactions.create(self.leader_key) == 0],
                        success=[self.client.transactions.put(
                            self.leader_key, json.dumps({"node": self.node_id, "url": self.url}).encode(),
                            lease=self._lease.id)], failure=[])
                    if ok:
                        current = await self.client.get(self.leader_key)
                if current is not None:
                    self._revision = max(self._revision, current.header.revision)
                    self._leader = json.loads(current.value)
                    if self._leader.get("node") == self.node_id and current.lease == self._lease.id:
                        if self._leading != current.create_revision:
                            self._leading = current.create_revision
                            self._event("role", role="leader", term=self._leading)
                            log.info("replica %d leads (leader key revision %d)", self.node_id, self._leading)
                    else:
                        self._step_down(f"replica {self._leader.get('node')} leads")
                else:
                    self._leader = None
                    self._step_down("no leader")
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # etcd unreachable, the lease lost: not the leader until it is sure again
                log.warning("replica %d: etcd: %r", self.node_id, exc)
                self._step_down(f"etcd: {exc.__class__.__name__}")
                self._lease = None
            await asyncio.sleep(POLL_SECONDS)

    def _step_down(self, why: str) -> None:
        if self._leading is not None:
            log.info("replica %d no longer leads: %s", self.node_id, why)
            self._event("role", role="follower", term=self._leading, why=why)
        self._leading = None
        self._caught_up = None

    # --------------------------------------------------------------------------------- the store
    @property
    def leading(self) -> int | None:
        return self._leading

    def leader_url(self) -> str | None:
        if self._isolated or self._leader is None:
            return None
        return self._leader.get("url")

    async def catch_up(self) -> None:
        term = self._leading
        if term is None:
            raise NotLeader(self.leader_url())
        if self._caught_up == term:
            return
        try:
            found = await self.client.get_prefix(self.prefix + b"txn/")
        except aetcd.exceptions.ClientError as exc:
            raise NotLeader(None) from exc
        records = sorted((json.loads(kv.value) for kv in found), key=lambda r: r["created"])
        self.book = TxnBook()
        self.book.load(records)
        self.revisions = {json.loads(kv.value)["gid"]: kv.mod_revision for kv in found}
        self._caught_up = term

    def _fence(self) -> Any:
        return self.client.transactions.create(self.leader_key) == self._leading

    async def propose(self, cmd: dict[str, Any]) -> str:
        if self._leading is None or self._caught_up != self._leading:
            raise NotLeader(self.leader_url())
        if cmd.get("op") == "reset":
            return await self._reset()
        gid = cmd.get("gid")
        if not isinstance(gid, str):
            return TxnBook().apply(cmd)  # malformed: the book says why
        entry = self._locks.setdefault(gid, [asyncio.Lock(), 0])  # one change of a record at a time
        entry[1] += 1
        try:
            async with entry[0]:
                return await self._change(gid, cmd)
        finally:
            entry[1] -= 1
            if not entry[1]:
                self._locks.pop(gid, None)

    async def _change(self, gid: str, cmd: dict[str, Any]) -> str:
        if self._leading is None or self._caught_up != self._leading:  # stepped down while waiting for the lock
            raise NotLeader(self.leader_url())
        scratch = TxnBook()
        current = self.book.get(gid)
        if current is not None:
            scratch.load([copy.deepcopy(current)])
        outcome = scratch.apply(cmd)
        if outcome in ("ignored", "exists", "unknown gid") or outcome.startswith("malformed"):
            return outcome
        record = scratch.get(gid)
        key = self.prefix + b"txn/" + gid.encode()
        t = self.client.transactions
        try:
            ok, _ = await self.client.transaction(
                compare=[self._fence(), t.mod(key) == self.revisions.get(gid, 0)],
                success=[t.put(key, json.dumps(record, separators=(",", ":")).encode())], failure=[])
        except aetcd.exceptions.ClientError as exc:
            raise OutcomeUnknown(f"etcd: {exc.__class__.__name__}") from exc
        if not ok:
            self._step_down("a fenced write failed: another replica leads, or the record changed")
            raise NotLeader(self.leader_url())
        stored = await self.client.get(key)
        self.revisions[gid] = stored.mod_revision if stored is not None else 0
        self._revision = max(self._revision, self.revisions[gid])
        self.book.load_one(record)
        return outcome

    async def _reset(self) -> str:
        t = self.client.transactions
        end = aetcd.utils.prefix_range_end(self.prefix + b"txn/")
        ok, _ = await self.client.transaction(compare=[self._fence()],
                                              success=[t.delete(self.prefix + b"txn/", range_end=end)], failure=[])
        if not ok:
            self._step_down("a fenced write failed")
            raise NotLeader(self.leader_url())
        self.book = TxnBook()
        self.revisions.clear()
        return "ok"

    def status(self) -> dict[str, Any]:
        leader = self._leader.get("node") if self._leader and not self._isolated else None
        return {"id": self.node_id, "role": "leader" if self._leading is not None else "follower",
                "term": self._leading or 0, "leader": leader or 0, "commit": self._revision,
                "applied": self._revision, "peers": {i: self.settings.url(f"coordinator-{i}")
                                                     for i in range(1, self.settings.coordinator_nodes + 1)},
                "blocked": [i for i in range(1, self.settings.coordinator_nodes + 1) if i != self.node_id]
                if self._isolated else [], "store": self.settings.coordinator_store,
                "transactions": len(self.book.records)}

    def isolate(self, others: bool) -> None:
        self._isolated = others


async def delete_records(settings: Settings) -> None:
    """Forget every transaction while no replica runs (`txlab seed`)."""
    host, port = _endpoint(settings)
    async with aetcd.Client(host=host, port=port, timeout=5) as client:
        await client.delete_prefix(key_prefix(settings) + b"txn/")
