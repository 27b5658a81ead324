"""Telemetry on real processes: one order is one trace across HTTP, RabbitMQ and PostgreSQL (publish and
consume spans included), every process serves /metrics and /alive, logs are JSON lines carrying the trace and
the order, and spans reach an OTLP endpoint when one is set."""

from __future__ import annotations

import json
import socket
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from prometheus_client.parser import text_string_to_metric_families

from services.demo import Client, order_bodies
from services.supervisor import all_processes
from tests.polling import eventually

from .conftest import PLAN, own_system, place, settled

pytestmark = pytest.mark.e2e


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


COLLECTOR_PORT = free_port()
settings, system = own_system("telemetry", coordinator=True, otlp_endpoint=f"http://127.0.0.1:{COLLECTOR_PORT}")


class Collector(ThreadingHTTPServer):
    """A stand-in OTLP/HTTP collector on loopback: keeps the names of the spans it is sent."""

    def __init__(self) -> None:
        self.spans: Counter[str] = Counter()
        super().__init__(("127.0.0.1", COLLECTOR_PORT), _Receive)


class _Receive(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        request = ExportTraceServiceRequest.FromString(body)
        for resource in request.resource_spans:
            for scope in resource.scope_spans:
                self.server.spans.update(s.name for s in scope.spans)
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module", autouse=True)
def collector():
    server = Collector()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()


async def paid_order(settings, pattern: str) -> str:
    client = Client(settings, retry_for=60.0)
    try:
        (order_id,) = await place(client, order_bodies(PLAN, 1, pattern, seed=3))
    finally:
        await client.aclose()
    await settled(settings, [order_id])
    return order_id


async def whole_trace(admin: httpx.AsyncClient, order_id: str, wanted: set[str]) -> dict:
    """The order's telemetry, once every span in `wanted` ("name" or "name@process") has arrived (the rings
    fill as work ends)."""
    async def probe():
        answer = (await admin.get("/telemetry", params={"order_id": order_id})).json()
        seen = {s["name"] for s in answer["spans"]} | {f"{s['name']}@{s['process']}" for s in answer["spans"]}
        return answer if wanted <= seen else None

    return await eventually(probe, within=30, interval=0.5, what=f"the spans {sorted(wanted)}")


async def test_an_outbox_order_is_one_trace_across_http_rabbitmq_and_postgres(settings, system, admin):
    order_id = await paid_order(settings, "outbox")
    trace = await whole_trace(admin, order_id, {"POST /orders", "publish order.created@order",
                                                "consume order.created@inventory", "consume order.created@payment",
                                                "publish payment.succeeded@payment",
                                                "consume payment.succeeded@order"})
    spans = trace["spans"]
    assert len({s["trace_id"] for s in spans}) == 1, "one order, one trace"
    by_id = {s["span_id"]: s for s in spans}
    for topic, producer, consumer in [("order.created", "order", "inventory"), ("order.created", "order", "payment"),
                                      ("payment.succeeded", "payment", "order")]:
        publish = next(s for s in spans if s["name"] == f"publish {topic}")
        consume = next(s for s in spans if s["name"] == f"consume {topic}" and s["process"] == consumer)
        assert (publish["kind"], publish["process"]) == ("producer", producer)
        assert consume["kind"] == "consumer"
        assert consume["parent_id"] == publish["span_id"], "the consumer's parent is the publish (AMQP headers)"
        assert consume["attributes"]["order_id"] == order_id
    # the publish's parent is the span that wrote the outbox row, through the envelope's traceparent
    created = next(s for s in spans if s["name"] == "publish order.created")
    assert by_id[created["parent_id"]]["name"] == "POST /orders"
    assert by_id[created["parent_id"]]["attributes"]["order_id"] == order_id
    paid = next(s for s in spans if s["name"] == "publish payment.succeeded")
    assert (by_id[paid["parent_id"]]["name"], by_id[paid["parent_id"]]["process"]) == ("consume order.created",
                                                                                      "payment")
    # PostgreSQL: the statements of a consumed message are its children
    consume = next(s for s in spans if s["name"] == "consume order.created")
    assert any(s["name"].startswith("db ") and s["parent_id"] == consume["span_id"] for s in spans)


async def test_a_tcc_order_is_one_trace_through_the_coordinator(settings, system, admin):
    order_id = await paid_order(settings, "tcc")
    trace = await whole_trace(admin, order_id, {"POST /orders", "drive tcc", "POST tcc/try", "POST tcc/confirm",
                                                "POST /internal/tcc/try"})
    spans = trace["spans"]
    assert len({s["trace_id"] for s in spans}) == 1
    processes = {s["process"] for s in spans}
    assert {"order", "inventory", "payment"} <= processes
    assert any(p.startswith("coordinator-") for p in processes)
    drive = next(s for s in spans if s["name"] == "drive tcc")
    assert drive["attributes"]["gid"] == order_id


async def test_every_process_serves_metrics_and_alive(settings, system, admin):
    await paid_order(settings, "outbox")
    wanted = {"order": {"txlab_orders", "txlab_outbox_lag_seconds", "txlab_messages_parked", "txlab_cache_hit_ratio"},
              "inventory": {"txlab_outbox_due_rows", "txlab_events_applied", "txlab_cache_hits"},
              "payment": {"txlab_outbox_published", "txlab_consumer_in_flight"},
              "broker": {"txlab_half_messages", "txlab_halfmsg_checks"},
              "admin": {"process_cpu_seconds"}}
    async with httpx.AsyncClient(timeout=10.0) as http:
        for process in all_processes(settings):
            assert (await http.get(f"{settings.url(process)}/alive")).json()["status"] == "alive"
            response = await http.get(f"{settings.url(process)}/metrics")
            assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
            families = {f.name: f for f in text_string_to_metric_families(response.text)}
            if process == "order":
                orders = families["txlab_orders"]
            expected = wanted.get(process, {"txlab_raft_term", "txlab_raft_commit_index", "txlab_raft_applied_index",
                                            "txlab_transactions"})
            assert expected <= set(families), f"{process} lacks {expected - set(families)}"
            for family in families.values():  # never a label per order or per transaction
                for sample in family.samples:
                    assert not any(len(v) >= 32 and "-" in v for v in sample.labels.values()), sample
    assert sum(s.value for s in orders.samples if s.labels["state"] == "PAID") >= 1


async def test_logs_are_json_lines_with_the_trace_and_the_order(settings, system, admin):
    await admin.post("/faults", json={"point": "payment.before_commit", "action": "error", "times": 1})
    order_id = await paid_order(settings, "outbox")  # its payment fails once, then succeeds
    lines = (settings.log_dir / "payment.log").read_text().splitlines()
    entries = [json.loads(line) for line in lines if line.startswith("{")]
    assert entries and len(entries) == len([line for line in lines if line.strip()]), "every line is JSON"
    failed = [e for e in entries if e.get("order_id") == order_id and e["level"] == "warning"]
    assert failed, "the failure's log line names its order"
    assert failed[0]["level"] == "warning" and len(failed[0]["trace_id"]) == 32
    trace = await whole_trace(admin, order_id, {"consume order.created@payment"})
    assert failed[0]["trace_id"] == trace["spans"][0]["trace_id"]
    assert any(entry["order_id"] == order_id for entry in trace["logs"]), "the dashboard sees the line too"
    assert any(f["point"] == "payment.before_commit" for f in trace["faults"])


async def test_spans_reach_the_otlp_endpoint(settings, system, collector):
    await paid_order(settings, "outbox")
    await eventually(lambda: collector.spans["publish order.created"] and collector.spans["consume order.created"],
                     within=30, interval=0.5, what="publish and consume spans exported over OTLP")


async def test_telemetry_needs_the_token(settings, system):
    async with httpx.AsyncClient(timeout=10.0) as http:
        assert (await http.get(f"{settings.url('admin')}/telemetry")).status_code == 401
        assert (await http.get(f"{settings.url('inventory')}/internal/telemetry")).status_code == 401


async def test_a_2pc_order_traces_its_prepared_transactions(settings, system, admin):
    order_id = await paid_order(settings, "2pc")
    trace = await whole_trace(admin, order_id, {"drive 2pc", "POST /internal/xa/prepare@inventory",
                                                "db PREPARE TRANSACTION@inventory", "db PREPARE TRANSACTION@payment",
                                                "db COMMIT PREPARED@inventory", "db COMMIT PREPARED@payment"})
    by_id = {s["span_id"]: s for s in trace["spans"]}
    prepare = next(s for s in trace["spans"] if s["name"] == "db PREPARE TRANSACTION")
    assert by_id[prepare["parent_id"]]["name"] == "POST /internal/xa/prepare"
    assert by_id[prepare["parent_id"]]["attributes"]["gid"] == order_id  # the participant names its transaction
    assert f"txlab:{order_id}:" in prepare["attributes"]["db.statement"]


async def test_a_halfmsg_order_is_delivered_by_the_broker_in_its_trace(settings, system, admin):
    order_id = await paid_order(settings, "halfmsg")
    trace = await whole_trace(admin, order_id, {"POST /orders", "publish order.created@broker",
                                                "consume order.created@inventory"})
    spans = trace["spans"]
    assert len({s["trace_id"] for s in spans}) == 1
    publish = next(s for s in spans if s["name"] == "publish order.created")
    consume = next(s for s in spans if s["name"] == "consume order.created" and s["process"] == "inventory")
    assert consume["parent_id"] == publish["span_id"]


async def test_log_lines_of_a_transaction_carry_its_gid_in_the_coordinator_and_the_participant(settings, system,
                                                                                              admin):
    await admin.post("/faults", json={"point": "payment.tcc.confirm", "action": "error", "times": 1})
    try:
        order_id = await paid_order(settings, "tcc")  # its payment Confirm fails once, then is retried
    finally:
        await admin.delete("/faults")

    async def lines():
        logs = (await admin.get("/telemetry", params={"order_id": order_id})).json()["logs"]
        where = {entry["process"] for entry in logs if entry["gid"] == order_id and entry["level"] == "warning"}
        return logs if "payment" in where and any(p.startswith("coordinator-") for p in where) else None

    logs = await eventually(lines, within=30, interval=0.5, what="warnings naming the gid in both processes")
    fired = next(e for e in logs if e["process"] == "payment" and "payment.tcc.confirm" in e["message"])
    assert fired["order_id"] == order_id and len(fired["trace_id"]) == 32


async def test_what_fired_is_read_alone_and_a_bad_kind_is_refused(settings, system, admin):
    await admin.post("/faults", json={"point": "relay.after_publish", "action": "delay", "delay_ms": 1, "times": 1})
    try:
        await paid_order(settings, "outbox")
    finally:
        await admin.delete("/faults")
    fired = (await admin.get("/telemetry", params={"kinds": "faults"})).json()
    assert fired["spans"] == [] and fired["logs"] == []
    assert any(f["point"] == "relay.after_publish" for f in fired["faults"])
    assert (await admin.get("/telemetry", params={"kinds": "spans,secrets"})).status_code == 422
