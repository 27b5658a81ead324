"""The ring tracer keeps what the SDK kept: one trace per traceparent, parents, kinds, failures and attributes,
and hands finished spans to an exporter as the SDK's ReadableSpan."""

from __future__ import annotations

import pytest
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.trace import SpanKind, StatusCode

from services.common.tracing import context_of, current, failed, new_traceparent, trace_id_of, traceparent_of
from services.runtime.ring_tracer import Kept, RingTracer


class Exported(SpanProcessor):
    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def on_end(self, span: ReadableSpan) -> None:
        self.spans.append(span)


@pytest.fixture
def kept() -> list[Kept]:
    return []


@pytest.fixture
def exported() -> Exported:
    return Exported()


@pytest.fixture
def tracer(kept: list[Kept], exported: Exported) -> RingTracer:
    return RingTracer(kept.append, exported, Resource.create({"service.name": "txlab-test"}))


def test_children_share_the_trace_of_the_traceparent_and_name_their_parent(tracer, kept):
    traceparent = new_traceparent()
    with tracer.start_as_current_span("POST /orders", context=context_of(traceparent), kind=SpanKind.SERVER,
                                      attributes={"order_id": "o-1", "skus": ["a", "b"], "empty": None}) as server:
        with tracer.start_as_current_span("db INSERT", kind=SpanKind.CLIENT):
            pass
        consumer = tracer.start_span("consume order.created", kind=SpanKind.CONSUMER)
        consumer.set_attribute("batch", 3)
        consumer.end()
        consumer.end()  # a second end changes nothing
        consumer.set_attribute("late", 1)
    statement, consume, request = kept
    assert {f"{s.trace_id:032x}" for s in kept} == {trace_id_of(traceparent)}
    assert request.parent_id == int(traceparent.split("-")[2], 16)
    assert statement.parent_id == consume.parent_id == request.span_id == server.get_span_context().span_id
    assert [(s.name, s.kind) for s in kept] == [("db INSERT", "client"), ("consume order.created", "consumer"),
                                                ("POST /orders", "server")]
    assert request.attributes == (("order_id", "o-1"), ("skus", ("a", "b")))
    assert consume.attributes == (("batch", 3),)
    assert all(s.start_ns <= s.end_ns for s in kept) and not any(s.error for s in kept)


def test_a_span_without_a_parent_starts_a_new_trace(tracer, kept):
    for _ in range(2):
        tracer.start_span("relay").end()
    first, second = kept
    assert first.parent_id == second.parent_id == 0 and first.trace_id != second.trace_id


def test_a_failure_marks_the_span_whether_recorded_by_hand_or_by_an_exception(tracer, kept, exported):
    span = tracer.start_span("publish order.paid")
    failed(span, ConnectionError("gone"))
    span.end()
    with pytest.raises(KeyError), tracer.start_as_current_span("handle"):
        raise KeyError("x")
    assert [s.error for s in kept] == [True, True]
    assert exported.spans[0].status.status_code is StatusCode.ERROR
    assert exported.spans[0].status.description == "ConnectionError: gone"


def test_a_parent_that_asked_not_to_be_sampled_gets_no_recording_child(tracer, kept):
    unsampled = new_traceparent()[:-2] + "00"
    span = tracer.start_span("consume", context=context_of(unsampled))
    assert not span.is_recording()
    assert f"{span.get_span_context().trace_id:032x}" == trace_id_of(unsampled)
    span.end()
    assert kept == []


def test_the_exporter_gets_the_span_as_the_sdk_would_have_made_it(tracer, kept, exported):
    with tracer.start_as_current_span("POST /orders", kind=SpanKind.SERVER) as parent:
        child = tracer.start_span("db SELECT", kind=SpanKind.CLIENT, attributes={"db.statement": "SELECT 1"})
        child.end()
    span = exported.spans[0]
    assert (span.name, span.kind, span.attributes["db.statement"]) == ("db SELECT", SpanKind.CLIENT, "SELECT 1")
    assert span.parent.span_id == parent.get_span_context().span_id
    assert span.context.trace_flags.sampled and span.resource.attributes["service.name"] == "txlab-test"
    assert (span.start_time, span.end_time) == (kept[0].start_ns, kept[0].end_ns)


def test_a_span_made_current_is_the_parent_of_the_traceparent_written_meanwhile(tracer):
    span = tracer.start_span("consume stock.reserved")
    with current(span):
        assert trace.get_current_span() is span
    assert traceparent_of(span).split("-")[2] == f"{span.get_span_context().span_id:016x}"
