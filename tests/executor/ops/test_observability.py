"""One trace per run across client, server, worker and store; JSON logs with the run id."""

from __future__ import annotations

import io
import json
import logging
import time
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from qledger.api import qledger_pb2 as pb
from qledger.api import qledger_pb2_grpc as pb_grpc
from qledger.governance.changes import grant_role
from qledger.ledger.admin import ROOT
from qledger.ledger.keys import KeyStore
from qledger.ops.tracing import configure_json_logging, configure_tracing, remove_json_logging
from qledger.rpc.channel import client_channel
from qledger.runs.reference_workflows import GHZ_NOISY
from qledger.runs.workflow import DEFAULT_PROJECT
from tests.executor.conftest import STEPS, ServiceFactory

_EXPORTER = InMemorySpanExporter()


@pytest.fixture(scope="module")
def spans() -> Iterator[InMemorySpanExporter]:
    # The global tracer provider can be set once per process; every test here shares it.
    configure_tracing(_EXPORTER, "qledger-test")
    yield _EXPORTER


def test_one_trace_per_run(service_factory: ServiceFactory, spans: InMemorySpanExporter) -> None:
    spans.clear()
    service = service_factory()
    run_id = service.submit(GHZ_NOISY).run.run_id
    service.watch(run_id)
    deadline = time.monotonic() + 10
    while not any(s.name == "run" for s in spans.get_finished_spans()) and time.monotonic() < deadline:
        time.sleep(0.05)
    finished = spans.get_finished_spans()
    client = next(s for s in finished if s.name.endswith("/SubmitWorkflow") and s.kind == SpanKind.CLIENT)
    trace_id = client.context.trace_id
    same_trace = [s for s in finished if s.context.trace_id == trace_id]
    server = next(s for s in same_trace if s.name.endswith("/SubmitWorkflow") and s.kind == SpanKind.SERVER)
    assert server.parent is not None and server.parent.span_id == client.context.span_id
    run = next(s for s in same_trace if s.name == "run")
    assert run.attributes["qledger.run_id"] == run_id
    steps = {s.attributes["qledger.step"]: s for s in same_trace if s.name.startswith("step ")}
    assert list(steps) == STEPS
    assert all(s.parent is not None and s.parent.span_id == run.context.span_id for s in steps.values())
    assert all(s.attributes["qledger.run_id"] == run_id for s in steps.values())
    execution = steps["execution"].attributes
    assert execution["qledger.backend"] == "aer_noisy" and "qiskit" in str(execution["qledger.sdk"])
    appends = [s for s in same_trace if s.name == "ledger.append"]
    assert appends and all(s.attributes["qledger.run_id"] == run_id for s in appends)
    # Another run is another trace.
    other = service.submit(GHZ_NOISY, key="another").run.run_id
    service.watch(other)
    time.sleep(0.2)
    runs = {s.attributes["qledger.run_id"]: s.context.trace_id for s in spans.get_finished_spans()
            if s.name == "run"}
    assert runs[other] != runs[run_id]


def test_json_logs_carry_the_run_id(service_factory: ServiceFactory, spans: InMemorySpanExporter) -> None:
    stream = io.StringIO()
    handler = configure_json_logging(logging.INFO, stream)
    try:
        service = service_factory()
        run_id = service.submit(GHZ_NOISY).run.run_id
        service.watch(run_id)
        deadline = time.monotonic() + 10
        while run_id not in stream.getvalue() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        remove_json_logging(handler)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    finished = [line for line in lines if line.get("run_id") == run_id and line["name"] != "qledger.access"]
    assert finished and finished[-1]["message"] == f"run {run_id} completed after attempt 1"
    assert finished[-1]["level"] == "INFO" and len(finished[-1]["trace_id"]) == 32
    run_span = next(s for s in spans.get_finished_spans() if s.name == "run"
                    and s.attributes["qledger.run_id"] == run_id)
    assert finished[-1]["trace_id"] == format(run_span.context.trace_id, "032x")


def test_json_logs_are_one_object_per_line_with_iso_times_and_call_lines(
        service_factory: ServiceFactory, spans: InMemorySpanExporter) -> None:
    stream = io.StringIO()
    handler = configure_json_logging(logging.INFO, stream)
    try:
        service = service_factory(authorize=True)
        grant_role(service.app, KeyStore(service.home).load(ROOT), "alice", "submitter", DEFAULT_PROJECT)
        run_id = service.submit(GHZ_NOISY).run.run_id
        with client_channel(service.running.address, signer=service.client) as channel:
            list(pb_grpc.ExecutorStub(channel).WatchRun(pb.WatchRunRequest(run_id=run_id), timeout=60))
        with pytest.raises(grpc.RpcError):  # anonymous: denied, logged, recorded
            service.executor.GetRun(pb.GetRunRequest(run_id=run_id), timeout=10)
        logging.getLogger("eventsourcing").warning("a library's warning")
        warnings.warn("a Python warning", UserWarning, stacklevel=1)
    finally:
        remove_json_logging(handler)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]  # every line is JSON
    for line in lines:
        stamp = datetime.fromisoformat(line["time"])
        assert stamp.tzinfo is not None and abs(stamp - datetime.now(UTC)) < timedelta(minutes=5), line
    calls = [line for line in lines if line.get("grpc_method") == "/qledger.v1.Executor/GetRun"
             and "grpc_code" in line]
    assert [c["grpc_code"] for c in calls] == ["UNAUTHENTICATED"]
    assert calls[0]["run_id"] == run_id and len(calls[0]["trace_id"]) == 32 and calls[0]["duration_ms"] >= 0
    [denial] = [line for line in lines if line.get("refusal") == "access_denied"]
    assert denial["run_id"] == run_id and denial["trace_id"] == calls[0]["trace_id"]
    assert denial["level"] == "WARNING" and "anonymous calling GetRun" in denial["message"]
    assert any(line["name"] == "eventsourcing" for line in lines)
    assert any(line["name"] == "py.warnings" and "a Python warning" in line["message"] for line in lines)
