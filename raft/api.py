"""The node's JSON HTTP API: the replicated KV store, Raft status, and the admin controls for faults.

- `PUT /kv/{key}` `{"value": v}` -> 200 `{"key", "value"}` once committed and applied.
- `GET /kv/{key}` -> 200 `{"key", "value"}` or 404, linearizable (ReadIndex on the leader).
- `POST /kv/{key}/cas` `{"expected": e, "value": v}` -> 200 swapped, 409 not (expected null matches a
  missing key).
- `DELETE /kv/{key}` -> 200 deleted, 404 absent.
- `POST /sessions` -> 200 `{"session": id, "timeout": seconds}` once the registration committed.
- `GET /raft/status` -> id, role, term, leader, commit, applied, peers, ...
- `GET /raft/events?since=N` -> this node's recent role changes, votes and rolled-back entries.
- Admin (always `Authorization: Bearer <token>`, the installation's admin token: see
  `raft.cluster.admin_token`): `POST /raft/partition` `{"block": [ids]}`,
  `DELETE /raft/partition`, `POST /raft/campaign`, `POST /raft/transfer-leader` `{"to": id}`,
  `POST /raft/members` `{"op": "add-learner" | "promote" | "remove" | "add", "node": id}` (answers once
  the change committed, with the voters and learners; 409 with the reason when refused, e.g. promoting a
  learner that has not caught up). add-learner then promote is the safe way to add a server; "add" makes
  a voter at once.

On a follower, KV routes answer 307 with Location on the leader (same path), or 503 `{"leader": null}`
while no leader is known. Optional headers `X-Session-Id` (from `POST /sessions`) + `X-Request-Seq` (1, 2,
...) make a write exactly-once: a retry with the same pair returns the first outcome without applying
again. A write on a session that is unknown or expired (idle longer than the timeout, in log time) is
refused with 410 "session expired" and not applied.

The leader stamps every command with its wall clock and its session timeout (`TXLAB_RAFT_SESSION_TIMEOUT`
seconds, default 3600); replicas expire sessions by those stamps only (see `raft.kv`).
"""

from __future__ import annotations

import hmac
import json
import os
import time
from typing import Any
from urllib.parse import parse_qs, unquote

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.process_collector import ProcessCollector

from raft.core import NotLeader
from raft.http_server import Request, Response
from raft.kv import (
    DEFAULT_SESSION_TIMEOUT,
    KVStateMachine,
    Op,
    Outcome,
    Registered,
    canonical_json,
    encode_command,
    encode_register,
)
from raft.node import CommitUnknown, RaftNode
from raft.types import CONF_CHANGE_OPS, ConfChange

MAX_KEY = 1024


def _json(status: int, obj: Any, headers: list[tuple[str, str]] | None = None) -> Response:
    return Response(status, json.dumps(obj).encode(), headers or [])


def _error(status: int, message: str, **extra: Any) -> Response:
    return _json(status, {"error": message, **extra})


class BadRequest(Exception):
    """The client sent something this API cannot accept; the message says what."""


class KVApi:
    """Request handler for one node (pass it to `HttpServer`)."""

    def __init__(self, node: RaftNode, admin_token: str, session_timeout: float | None = None) -> None:
        """`admin_token` is required: the admin routes are never open."""
        if not isinstance(node.machine, KVStateMachine):
            raise TypeError("the KV API needs a node replicating a KVStateMachine")
        if not admin_token:
            raise ValueError("the admin routes need a token")
        self.node = node
        self.kv: KVStateMachine = node.machine
        self.admin_token = admin_token
        self.session_timeout = session_timeout or _session_timeout_from_env()
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self.registry.register(self)  # collect() below

    async def __call__(self, req: Request) -> Response:
        try:
            path = req.path
            if path.startswith("/kv/"):
                return await self._kv(req, path[4:])
            if path == "/sessions":
                return await self._register(req)
            if path == "/raft/status" and req.method == "GET":
                return _json(200, {**self.node.status(), "keys": len(self.kv.data)})
            if path == "/raft/events" and req.method == "GET":
                return self._events(req)
            if path.startswith("/raft/"):
                return await self._admin(req, path[6:])
            if path in ("/", "/healthz"):
                return _json(200, {"ok": True, "id": self.node.cfg.id})
            if path == "/alive":
                return _json(200, {"status": "alive", "id": self.node.cfg.id})
            if path == "/metrics" and req.method == "GET":
                return Response(200, generate_latest(self.registry), content_type=CONTENT_TYPE_LATEST)
            return _error(404, f"no route {path}")
        except BadRequest as exc:
            return _error(400, str(exc))

    def collect(self) -> list[GaugeMetricFamily]:
        """The node's Raft figures, for Prometheus (`/metrics`)."""
        st = self.node.status()
        node = [str(self.node.cfg.id)]
        figures = [("raft_term", "the node's current term", st["term"]),
                   ("raft_commit_index", "the highest log index known committed", st["commit"]),
                   ("raft_applied_index", "the highest log index applied", st["applied"]),
                   ("raft_leader", "1 on the leader", float(self.node.is_leader)),
                   ("raft_kv_keys", "keys in the replicated store", len(self.kv.data))]
        families = []
        for name, doc, value in figures:
            family = GaugeMetricFamily(f"txlab_{name}", doc, labels=["node"])
            family.add_metric(node, value)
            families.append(family)
        return families

    # ------------------------------------------------------------------------------------------ KV
    async def _kv(self, req: Request, rest: str) -> Response:
        method = req.method
        if method == "POST":
            if not rest.endswith("/cas"):
                return _error(405, "POST is only for /kv/{key}/cas")
            rest = rest[:-4]
        elif method not in ("GET", "PUT", "DELETE"):
            return _error(405, f"{method} not allowed on /kv/{{key}}")
        key = unquote(rest)
        if not key or len(key) > MAX_KEY:
            raise BadRequest(f"the key must be 1 to {MAX_KEY} characters")
        # validate everything before the leadership check: bad input is a 400 on every node
        session, seq = _session(req) if method != "GET" else (0, 0)
        value = expected = None
        if method in ("PUT", "POST"):
            body = _body(req)
            value = _canonical(_field(body, "value"))
            if method == "POST":
                expected = _canonical(_field(body, "expected"))
        node = self.node
        if not node.is_leader:
            return self._not_leader(node.core.leader, req)
        try:
            if method == "GET":
                await node.read_barrier()
                current = self.kv.get(key)
                if current is None:
                    return _error(404, "no such key", key=key)
                return Response(200, b'{"key":%s,"value":%s}' % (json.dumps(key).encode(), current.encode()))
            if method == "DELETE":
                outcome = await node.submit(self._command(Op.DELETE, key, None, None, session, seq))
                if outcome is Outcome.NOT_FOUND:
                    return _error(404, "no such key", key=key)
                return self._checked(outcome) or _json(200, {"key": key, "deleted": True})
            assert value is not None
            if method == "PUT":
                outcome = await node.submit(self._command(Op.PUT, key, value, None, session, seq))
                return self._checked(outcome) or Response(
                    200, b'{"key":%s,"value":%s}' % (json.dumps(key).encode(), value.encode()))
            outcome = await node.submit(self._command(Op.CAS, key, value, expected, session, seq))
            if outcome is Outcome.CONFLICT:
                return _json(409, {"key": key, "swapped": False})
            return self._checked(outcome) or Response(
                200, b'{"key":%s,"value":%s,"swapped":true}' % (json.dumps(key).encode(), value.encode()))
        except NotLeader as exc:
            return self._not_leader(exc.leader, req)
        except CommitUnknown as exc:
            return _error(503, str(exc), outcome="unknown", leader=node.core.leader or None)

    def _command(self, op: Op, key: str, value: str | None, expected: str | None, session: int, seq: int) -> bytes:
        """The command as this leader proposes it: stamped with its clock and session timeout."""
        return encode_command(op, key, value, expected, session, seq, now=time.time(),
                              session_timeout=self.session_timeout)

    async def _register(self, req: Request) -> Response:
        """Open a session through the log; its id is decided when the registration is applied."""
        if req.method != "POST":
            return _error(405, "use POST /sessions")
        if not self.node.is_leader:
            return self._not_leader(self.node.core.leader, req)
        try:
            result = await self.node.submit(encode_register(now=time.time(), session_timeout=self.session_timeout))
        except NotLeader as exc:
            return self._not_leader(exc.leader, req)
        except CommitUnknown as exc:  # a retry may open a second session; the unused one just expires
            return _error(503, str(exc), outcome="unknown", leader=self.node.core.leader or None)
        assert isinstance(result, Registered)
        return _json(200, {"session": result.session, "timeout": self.session_timeout})

    def _events(self, req: Request) -> Response:
        since = parse_qs(req.query).get("since", ["0"])[0]
        if not since.isdigit():
            raise BadRequest("since must be an event sequence number")
        events = [e for e in self.node.events if e["seq"] > int(since)]
        return _json(200, {"boot": self.node.boot_id, "events": events})

    @staticmethod
    def _checked(outcome: Outcome) -> Response | None:
        if outcome is Outcome.SESSION_EXPIRED:
            return _error(410, "session expired: this request was not applied; register a new session with "
                               "POST /sessions")
        if outcome is Outcome.STALE_SEQUENCE:
            return _error(409, "X-Request-Seq is older than this client's last request; its result is gone")
        if outcome is Outcome.MALFORMED:
            return _error(400, "the state machine rejected the command as malformed")
        return None

    def _not_leader(self, leader: int, req: Request) -> Response:
        if not leader or leader == self.node.cfg.id:
            return _json(503, {"error": "no leader known; retry shortly", "leader": None})
        location = self.node.cfg.http_url(leader) + req.path + (f"?{req.query}" if req.query else "")
        return _json(307, {"leader": leader, "location": location}, [("location", location)])

    # --------------------------------------------------------------------------------------- admin
    async def _change_membership(self, req: Request) -> Response:
        body = _body(req)
        op, target = _field(body, "op"), _field(body, "node")
        if op not in CONF_CHANGE_OPS or not isinstance(target, int) or isinstance(target, bool) or target < 1:
            raise BadRequest('use {"op": "add-learner" | "promote" | "remove" | "add", "node": <id >= 1>}')
        top = self.node.cfg.max_node_id
        if target > top:  # its ports would not exist, or be another node's: no such node can be a member
            raise BadRequest(f"node ids here are 1 to {top} (node i serves on ports {self.node.cfg.base_port} + i - 1 "
                             f"and {self.node.cfg.raft_port(1)} + i - 1), not {target}")
        try:
            await self.node.change_membership(ConfChange(op, target))
        except NotLeader as exc:
            return self._not_leader(exc.leader, req)
        except ValueError as exc:
            return _error(409, str(exc))
        except CommitUnknown as exc:
            return _error(503, str(exc), outcome="unknown")
        core = self.node.core
        return _json(200, {"voters": list(core.voters), "learners": list(core.learners)})

    async def _admin(self, req: Request, name: str) -> Response:
        given = req.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {self.admin_token}".encode()):
            return _error(401, "admin routes need Authorization: Bearer $TXLAB_ADMIN_TOKEN "
                               "(unset: the token saved in $TXLAB_DATA_DIR/admin-token)")
        node = self.node
        if name == "partition":
            if req.method == "POST":
                block = _field(_body(req), "block")
                if not isinstance(block, list) or not all(isinstance(i, int) and not isinstance(i, bool) and i > 0
                                                          for i in block):
                    raise BadRequest('"block" must be a list of node ids, e.g. {"block": [2, 3]}')
                if node.cfg.id in block:
                    raise BadRequest(f"node {node.cfg.id} cannot be cut off from itself; name the other nodes")
                node.transport.block(set(block))
                return _json(200, {"blocked": sorted(node.transport.blocked)})
            if req.method == "DELETE":
                node.transport.unblock()
                return _json(200, {"blocked": []})
            return _error(405, "use POST or DELETE on /raft/partition")
        if name == "members" and req.method == "POST":
            return await self._change_membership(req)
        if req.method != "POST":
            status = 405 if name in ("campaign", "transfer-leader", "members") else 404
            return _error(status, f"no route {req.method} /raft/{name}")
        if name == "campaign":
            node.campaign()
            return _json(200, {"campaigning": node.cfg.id})
        if name == "transfer-leader":
            to = _field(_body(req), "to")
            if not isinstance(to, int):
                raise BadRequest('"to" must be a node id')
            try:
                node.transfer_leadership(to)
            except NotLeader as exc:
                return self._not_leader(exc.leader, req)
            except ValueError as exc:
                raise BadRequest(str(exc)) from exc
            return _json(200, {"transferring_to": to})
        return _error(404, f"no route /raft/{name}")


def _body(req: Request) -> dict:
    try:
        obj = json.loads(req.body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise BadRequest(f"the body must be a JSON object: {str(exc)[:200]}") from exc
    if not isinstance(obj, dict):
        raise BadRequest("the body must be a JSON object")
    return obj


def _canonical(value: Any) -> str:
    try:
        return canonical_json(value)
    except ValueError as exc:  # NaN or Infinity: not JSON
        raise BadRequest(f"values must be plain JSON: {exc}") from exc


def _field(obj: dict, name: str) -> Any:
    if name not in obj:
        raise BadRequest(f'the body needs a "{name}" field')
    return obj[name]


def _session(req: Request) -> tuple[int, int]:
    """(session id, seq) from X-Session-Id and X-Request-Seq, or (0, 0) for a write without a session."""
    if "x-client-id" in req.headers:  # the old unregistered sessions: refuse rather than drop exactly-once
        raise BadRequest("X-Client-Id is no longer accepted: register with POST /sessions and send X-Session-Id")
    raw = req.headers.get("x-session-id", "")
    if not raw:
        return 0, 0
    try:
        session, seq = int(raw), int(req.headers.get("x-request-seq", ""))
    except ValueError as exc:
        raise BadRequest("X-Session-Id and X-Request-Seq must be integers") from exc
    if not (0 < session < 2**63 and 0 < seq < 2**63):
        raise BadRequest("X-Session-Id and X-Request-Seq must be in [1, 2^63)")
    return session, seq


def _session_timeout_from_env() -> float:
    raw = os.environ.get("TXLAB_RAFT_SESSION_TIMEOUT", "")
    try:
        timeout = float(raw) if raw else DEFAULT_SESSION_TIMEOUT
    except ValueError as exc:
        raise ValueError(f"TXLAB_RAFT_SESSION_TIMEOUT must be a number of seconds, not {raw!r}") from exc
    if not 0 < timeout < float("inf"):
        raise ValueError(f"TXLAB_RAFT_SESSION_TIMEOUT must be positive and finite, not {raw!r}")
    return timeout
