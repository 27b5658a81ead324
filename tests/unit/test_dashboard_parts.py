"""The dashboard's pure parts: the invariant badge, the span waterfall, the trace id of an envelope, the timeline,
the charts, the login redirect and the session cookie."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from services.admin.ui.auth import session_value
from services.admin.ui.charts import ring_svg, totals_chart
from services.admin.ui.data import timeline, trace_id_of, waterfall
from services.admin.ui.live import Sample, verdict
from services.admin.ui.router import _safe_next
from services.common.settings import Settings


def report(*invariants: dict, holds: bool = False) -> dict:
    return {"holds": holds, "invariants": list(invariants)}


def inv(name: str, violations: list[str] = (), counts: dict | None = None) -> dict:
    return {"name": name, "holds": not violations, "violations": list(violations),
            "violation_count": len(violations), "counts": counts or {}}


def test_the_badge_names_the_first_violation_found_on_a_quiet_system():
    badge = verdict(report(inv("stock: ..."), inv("money: balances ...", ["c00001: balance 5 + ... != 10"]),
                           inv("convergence: nothing in flight", [], {"orders_pending": 0})))
    assert badge["verdict"] == "violated"
    assert badge["text"] == "money: c00001: balance 5 + ... != 10"


def test_the_badge_says_settling_while_work_is_in_flight_not_violated():
    badge = verdict(report(inv("agreement: ...", ["PAID order x: stock ..."]),
                           inv("convergence: ...", ["orders_pending = 2"], {"orders_pending": 2, "order_queued": 1})))
    assert badge["verdict"] == "settling" and "orders_pending 2" in badge["text"]


def test_a_parked_message_on_a_quiet_system_is_a_violation_not_settling():
    badge = verdict(report(inv("stock: ..."), inv("convergence: ...", ["broker_parked = 1"],
                                                  {"orders_pending": 0, "broker_parked": 1})))
    assert badge["verdict"] == "violated" and "broker_parked = 1" in badge["text"]


def test_every_invariant_holding_is_green():
    assert verdict(report(inv("stock: ..."), inv("convergence: ..."), holds=True))["verdict"] == "holds"


def test_the_waterfall_orders_spans_by_start_and_places_each_under_its_parent():
    spans = [
        {"span_id": "c", "parent_id": "b", "name": "consume order.created", "kind": "consumer", "start": 10.5,
         "end": 10.9},
        {"span_id": "a", "parent_id": None, "name": "POST /orders", "kind": "server", "start": 10.0, "end": 11.0},
        {"span_id": "b", "parent_id": "a", "name": "publish order.created", "kind": "producer", "start": 10.2,
         "end": 10.3},
    ]
    rows = waterfall(spans)
    assert [r["span_id"] for r in rows] == ["a", "b", "c"]
    assert [r["depth"] for r in rows] == [0, 1, 2]
    assert rows[0]["offset"] == 0 and rows[0]["width"] == pytest.approx(100)
    assert rows[2]["offset"] == pytest.approx(50) and rows[2]["width"] == pytest.approx(40)
    assert rows[1]["ms"] == pytest.approx(100)
    assert waterfall([]) == []


def test_a_span_whose_parent_is_elsewhere_or_cyclic_still_gets_a_row():
    rows = waterfall([{"span_id": "x", "parent_id": "y", "start": 1.0, "end": 1.0},
                      {"span_id": "y", "parent_id": "x", "start": 1.0, "end": 2.0},
                      {"span_id": "z", "parent_id": "gone", "start": 1.5, "end": 1.6}])
    assert len(rows) == 3 and rows[-1]["depth"] == 0


def test_the_trace_id_is_read_from_a_w3c_traceparent():
    assert trace_id_of("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01") == \
        "4bf92f3577b34da6a3ce929d0e0e4736"
    assert trace_id_of(None) is None and trace_id_of("garbage") is None


def test_the_timeline_puts_every_process_in_time_order_and_the_undated_last():
    detail = {"order": None, "halfmsg_barrier": None, "half_messages": [], "participants": {},
              "outbox": {"order": [{"created_at": datetime.fromtimestamp(0.5, UTC), "sent_at": None,
                                    "routing_key": "order.created", "status": "FAILED", "attempts": 3,
                                    "last_error": "unroutable"}]},
              "global": {"timeline": [[2.0, "decided commit: CONFIRMING"], [1.0, "begun: TRYING"]],
                         "branches": {"payment": {"timeline": [[1.5, "try: FROZEN"]]}}}}
    assert [(e["ts"], e["where"], e["what"]) for e in timeline(detail)] == [
        (0.5, "order", "outbox row order.created written"), (1.0, "coordinator", "begun: TRYING"),
        (1.5, "coordinator", "payment: try: FROZEN"),
        (2.0, "coordinator", "decided commit: CONFIRMING"),
        (None, "order", "outbox row order.created FAILED: unroutable")]


def test_the_totals_chart_is_flat_and_says_constant_and_shades_the_armed_seconds():
    samples = [Sample(t, 1000, 50, armed) for t, armed in ((0.0, 0), (1.0, 1), (2.0, 1), (3.0, 0))]
    svg = str(totals_chart(samples, "money", 1000, "total money", "cents", fired=[1.5]))
    assert "(constant)" in svg and svg.count('class="fault"') == 1 and 'class="fired"' in svg
    assert len({p.split(",")[1] for p in svg.split('points="')[1].split('"')[0].split()}) == 1  # one height
    moved = str(totals_chart([Sample(0.0, 1000, 50, 0), Sample(1.0, 990, 50, 0)], "money", 1000, "m", "c"))
    assert "-10 vs seeded" in moved


def test_the_ring_draws_one_arc_per_run_of_an_owner():
    arcs = [{"owner": "a", "start": -0.1, "end": 0.3}, {"owner": "b", "start": 0.3, "end": 0.9}]
    svg = str(ring_svg(arcs, ["a", "b"]))
    assert svg.count("<path") == 2 and "<title>a</title>" in svg and "<title>b</title>" in svg


def test_a_login_only_returns_to_a_dashboard_page():
    assert _safe_next("/ui/raft") == "/ui/raft"
    for elsewhere in ("https://evil.example/", "//evil.example/ui", "/ui//evil", "/ui/login", "/metrics"):
        assert _safe_next(elsewhere) == "/ui"


def test_the_session_cookie_changes_with_the_token_and_does_not_contain_it():
    one, two = Settings(admin_token="secret-one"), Settings(admin_token="secret-two")
    assert session_value(one) != session_value(two) and "secret-one" not in session_value(one)


SPANS = [
    {"trace_id": "t1", "span_id": "a", "parent_id": None, "name": "POST /orders", "kind": "server", "process": "order",
     "start": 100.0, "end": 100.2, "status": "ok", "attributes": {"order_id": "o1"}},
    {"trace_id": "t1", "span_id": "b", "parent_id": "a", "name": "publish order.created", "kind": "producer",
     "process": "order", "start": 100.05, "end": 100.06, "status": "ok", "attributes": {}},
    {"trace_id": "t1", "span_id": "c", "parent_id": "b", "name": "consume order.created", "kind": "consumer",
     "process": "inventory", "start": 100.1, "end": 100.15, "status": "error", "attributes": {}},
]

FIRED = {"ts": 1.0, "process": "order", "point": "relay.after_publish", "action": "crash"}


async def test_the_telemetry_is_read_from_admins_aggregate_and_absent_without_it():
    from fastapi import FastAPI

    from services.admin.ui.data import fetch_telemetry

    app = FastAPI()
    app.state.settings = Settings(admin_token="t")
    assert await fetch_telemetry(app, trace_id="t1") is None  # no GET /telemetry: the views say "no spans yet"
    asked: list[dict] = []

    @app.get("/telemetry")
    async def telemetry(trace_id: str | None = None, order_id: str | None = None, limit: int = 0) -> dict:
        asked.append({"trace_id": trace_id, "order_id": order_id, "limit": limit})
        return {"spans": SPANS, "logs": [], "faults": [FIRED]}

    got = await fetch_telemetry(app, trace_id="t1", limit=50)
    assert got == {"spans": SPANS, "logs": [], "faults": [FIRED]}
    assert asked == [{"trace_id": "t1", "order_id": None, "limit": 50}]


def test_the_transaction_page_draws_the_waterfall_and_the_log_lines():
    from services.admin.ui.router import templates

    detail = {"id": "o1", "order": None, "global": None, "unavailable": [], "participants": {}, "outbox": {},
              "half_messages": [], "timeline": [], "trace_id": "t1", "telemetry": {"spans": SPANS},
              "spans": waterfall(SPANS),
              "logs": [{"ts": 100.1, "process": "inventory", "level": "WARNING", "logger": "x", "message": "slow"}]}
    html = templates.get_template("_transaction.html").render({"d": detail})
    assert html.count('class="span-row"') == 3
    assert 'data-kind="producer" data-name="publish order.created"' in html
    assert 'data-kind="consumer" data-name="consume order.created"' in html
    assert "span-bar consumer error" in html and "inventory · consume order.created" in html
    assert "slow" in html and "WARNING" in html
    empty = templates.get_template("_transaction.html").render({"d": detail | {"telemetry": None, "spans": []}})
    assert "no spans yet" in empty
