"""schemathesis over the OpenAPI of every process, on a running system: whatever a client sends, no answer is a
5xx (bad input is a 4xx that changes nothing).

The services, the broker and two coordinator replicas (the leader, and a follower that redirects to it) are
fuzzed with the admin token. The admin API is fuzzed with the token on its reads only; every admin route that
changes something (arming a fault, isolating a replica, removing a cache node, ...) is fuzzed without it, must
refuse everything, and so never arms a crash. Event streams and /metrics are left out (a stream never ends;
metrics are not the JSON API).

Each operation gets `MAX_EXAMPLES` schema-valid and as many schema-violating requests, derandomized: the same
code gets the same requests (Hypothesis also draws constants from the modules loaded), and a failure prints the
curl command that replays it."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import hypothesis
import pytest
import requests
import schemathesis
from schemathesis import APIOperation, Case, GenerationMode, Response

from services.common.settings import Settings

from .conftest import PLAN, own_system

pytestmark = pytest.mark.e2e

settings, system = own_system("fuzz", coordinator=True)

MAX_EXAMPLES = 25  # per operation and generation mode
EXCLUDED = r"^/metrics$"  # Prometheus text, not the JSON API
Check = Callable[[Case, Response], None]


def fuzz_config(token: str | None) -> schemathesis.Config:
    """The seeded skus and customers are offered often (not always), so that orders are placed and products
    read, besides refused."""
    skus, customers = [r[0] for r in PLAN.catalogue()], [r[0] for r in PLAN.customer_rows()]
    return schemathesis.Config.from_dict({
        "headers": {"Authorization": f"Bearer {token}"} if token else {},
        # no 5xx, and every answer has the content type documented (a schema-violating request is not checked
        # for a 4xx: in a query string, `false` is as good a sku as any)
        "checks": {"enabled": False, "not_a_server_error": {"enabled": True},
                   "content_type_conformance": {"enabled": True}},
        "dictionaries": {"skus": {"values": skus}, "customers": {"values": customers},
                         "patterns": {"values": ["outbox", "halfmsg", "tcc", "2pc", "3pc"]}},
        "parameters": {
            "body.customer_id": {"dictionary": "customers", "probability": 0.6},
            "body.items[*].sku": {"dictionary": "skus", "probability": 0.6},
            "body.pattern": {"dictionary": "patterns", "probability": 0.6},
            "path.sku": {"dictionary": "skus", "probability": 0.5},
            "path.customer_id": {"dictionary": "customers", "probability": 0.5},
            # GET /invariants is a long poll: waiting for a busy system to quiet down is not what this is about
            "query.wait": 0,
        },
    })


def api(url: str, token: str | None) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{url}/openapi.json", config=fuzz_config(token))


def fuzzable(operation: APIOperation) -> bool:
    """Not /metrics (Prometheus text), nor an event stream (it never ends)."""
    streams = "text/event-stream" in json.dumps(operation.definition.raw.get("responses", {}))
    return not re.match(EXCLUDED, operation.path) and not streams


def reads(operation: APIOperation) -> bool:
    return operation.method.upper() == "GET"


def changes(operation: APIOperation) -> bool:
    return not reads(operation)


@dataclass
class Report:
    """The statuses answered to each operation (`GET /orders`), and every failing request."""

    statuses: dict[str, Counter[int]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return f"{len(self.statuses)} operations, {sum(sum(c.values()) for c in self.statuses.values())} requests"


def election(response: Response) -> bool:
    """The coordinator's answer while no replica leads: 503 {"leader": null}."""
    try:
        return response.status_code == 503 and response.json().get("leader", "") is None
    except ValueError:
        return False


def answer(case: Case, session: requests.Session) -> Response:
    """The answer to `case` (a redirect is an answer: a client sends its token only where it chose to); during a
    coordinator election, the answer once a replica leads again."""
    response = case.call(session=session, timeout=30, allow_redirects=False)
    deadline = time.monotonic() + 30.0
    while election(response) and time.monotonic() < deadline:
        time.sleep(0.5)
        response = case.call(session=session, timeout=30, allow_redirects=False)
    return response


def fuzz_operation(operation: APIOperation, mode: GenerationMode, session: requests.Session, report: Report,
                   check: Check | None) -> None:
    statuses = report.statuses.setdefault(operation.label, Counter())

    @hypothesis.settings(max_examples=MAX_EXAMPLES, derandomize=True, database=None, deadline=None,
                         phases=[hypothesis.Phase.generate], suppress_health_check=list(hypothesis.HealthCheck))
    @hypothesis.given(operation.as_strategy(generation_mode=mode))
    def send(case: Case) -> None:
        response = answer(case, session)
        statuses[response.status_code] += 1
        try:
            case.validate_response(response)  # schemathesis's not_a_server_error
            if check is not None:
                check(case, response)
        except (AssertionError, BaseExceptionGroup) as exc:
            report.failures.append(f"{operation.label} ({mode}): {exc}\n{case.as_curl_command()}")

    try:
        send()
    except hypothesis.errors.Unsatisfiable:
        if mode is GenerationMode.POSITIVE:
            raise  # (an operation without parameters has no schema-violating request)


def fuzz(schema: schemathesis.BaseSchema, select: Callable[[APIOperation], bool] = fuzzable,
         check: Check | None = None) -> Report:
    """Send the cases of every operation `select` takes, schema-valid and not; each answer must pass
    schemathesis's checks and `check`. Failures are collected, not raised, so that one run names them all."""
    report = Report()
    operations = [op for op in (result.ok() for result in schema.get_all_operations()) if select(op)]
    with requests.Session() as session:
        for operation in operations:
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                fuzz_operation(operation, mode, session, report, check)
    print(report.summary())
    return report


def assert_clean(report: Report, system, token: bool = False) -> None:
    """No failing request, no process exited; with the `token`, no operation refused it."""
    assert not report.failures, f"{len(report.failures)} failing requests:\n\n" + "\n\n".join(report.failures)
    restarted = {name: child.exits for name, child in system.children.items() if child.restarts}
    assert not restarted, f"processes exited during the fuzz: {restarted}"
    refused = [op for op, statuses in report.statuses.items() if token and set(statuses) == {401}]
    assert not refused, f"the token was refused: {refused}"


def replica(settings: Settings, leading: bool, within: float = 30.0) -> str:
    """The URL of the coordinator replica that leads now, or of one that follows it."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        found = {}
        for name in settings.coordinators:
            try:
                found[name] = httpx.get(f"{settings.url(name)}/health", timeout=2.0).json()["leading"]
            except (httpx.HTTPError, ValueError, KeyError):
                continue
        if any(found.values()):
            return settings.url(next(name for name, leads in found.items() if leads == leading))
        time.sleep(0.2)
    raise AssertionError(f"no coordinator replica led within {within:.0f}s")


@pytest.mark.parametrize("process", ["order", "inventory", "payment", "broker", "coordinator leader",
                                     "coordinator follower"])
async def test_no_request_to_a_service_gets_a_server_error(settings, system, process):
    def run() -> Report:
        if process.startswith("coordinator"):
            url = replica(settings, leading=process == "coordinator leader")
        else:
            url = settings.url(process)
        return fuzz(api(url, settings.admin_token))

    report = await asyncio.to_thread(run)
    assert_clean(report, system, token=True)
    if process == "order":
        assert report.statuses["POST /orders"][201] > 0, "the fuzz placed no order"


async def test_no_read_of_the_admin_api_gets_a_server_error(settings, system):
    report = await asyncio.to_thread(fuzz, api(settings.url("admin"), settings.admin_token),
                                     lambda op: fuzzable(op) and reads(op))
    assert_clean(report, system, token=True)


ROUTER_REFUSALS = {404: {"detail": "Not Found"}, 405: {"detail": "Method Not Allowed"}}


def refused_without_the_token(case: Case, response: Response) -> None:
    """401; or, before the token is looked at, a body that is too large or not JSON at all, or a path or method
    no route takes."""
    try:
        body = response.json()
    except ValueError:
        body = None
    unparsed = response.status_code in (400, 413) or (response.status_code == 422 and "json_invalid" in response.text)
    unrouted = body is not None and body == ROUTER_REFUSALS.get(response.status_code)
    assert response.status_code == 401 or unparsed or unrouted, (
        f"answered {response.status_code} without the token: {response.text[:300]}")


async def test_admin_routes_that_change_state_refuse_every_request_without_the_token(settings, system):
    async def state() -> list:
        """The armed faults, the cache ring's nodes, and the replicas each coordinator replica cuts off."""
        async with httpx.AsyncClient(base_url=settings.url("admin"), timeout=30.0,
                                     headers={"Authorization": f"Bearer {settings.admin_token}"}) as admin:
            return [(await admin.get("/faults")).json(), (await admin.get("/cache/ring")).json()["nodes"]] + [
                (await admin.get(f"{settings.url(c)}/raft/status")).json()["blocked"] for c in settings.coordinators]

    before = await state()
    report = await asyncio.to_thread(fuzz, api(settings.url("admin"), None), lambda op: fuzzable(op) and changes(op),
                                     refused_without_the_token)
    assert_clean(report, system)
    assert {"POST /faults", "POST /coordinator/isolate/{node}", "DELETE /cache/nodes/{name}"} <= set(report.statuses)
    assert await state() == before
