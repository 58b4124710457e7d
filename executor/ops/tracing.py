"""Traces and structured logs that carry the run id.

One trace per run: the client's SubmitWorkflow span, the server's span (gRPC instrumentation
carries the W3C trace context across), then, possibly in another executor process, a ``run``
span continued from the trace context stored with the queued run, a span per step, and a
``ledger.append`` span per commit to the store.  The run id is an attribute of each, and of
every log line written while the run executes (JSON, one object per line).
"""

from __future__ import annotations

import contextvars
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from opentelemetry import trace
from opentelemetry.propagate import extract, inject
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from pythonjsonlogger.json import JsonFormatter

tracer = trace.get_tracer("qledger")
current_run: contextvars.ContextVar[str | None] = contextvars.ContextVar("qledger_run_id", default=None)


def configure_tracing(exporter: SpanExporter, service_name: str = "qledger",
                      batched: bool = False) -> TracerProvider:
    """Send spans to ``exporter``: batched for a collector, one by one for an in-memory test."""
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    provider.add_span_processor(BatchSpanProcessor(exporter) if batched else SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return provider


def configure_tracing_from_environment() -> TracerProvider | None:
    """OTLP export when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set (the OpenTelemetry convention;
    the exporter reads the endpoint, headers and TLS settings from the standard variables)."""
    if not os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return None
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    return configure_tracing(OTLPSpanExporter(), os.environ.get("OTEL_SERVICE_NAME", "qledger"),
                             batched=True)


def trace_parent() -> str | None:
    """The current trace context as a ``traceparent`` header value, to store with a run."""
    carrier: dict[str, str] = {}
    inject(carrier)
    return carrier.get("traceparent")


@contextmanager
def run_span(run_id: str, parent: str | None, **attributes: Any) -> Iterator[trace.Span]:
    """The span of a run's execution, continuing the submitter's trace when it is known."""
    parent_context = extract({"traceparent": parent}) if parent else None
    token = current_run.set(run_id)
    try:
        with tracer.start_as_current_span("run", context=parent_context, attributes={
                "qledger.run_id": run_id, **attributes}) as span:
            yield span
    finally:
        current_run.reset(token)


@contextmanager
def step_span(step: str, **attributes: Any) -> Iterator[trace.Span]:
    run_id = current_run.get()
    with tracer.start_as_current_span(f"step {step}", attributes={
            "qledger.run_id": run_id or "", "qledger.step": step,
            **{k: v for k, v in attributes.items() if v is not None}}) as span:
        yield span


class RunContextFilter(logging.Filter):
    """Puts the run id and the trace and span ids on every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.run_id = current_run.get()
        span = trace.get_current_span().get_span_context()
        record.trace_id = format(span.trace_id, "032x") if span.is_valid else None
        record.span_id = format(span.span_id, "016x") if span.is_valid else None
        return True


class IsoJsonFormatter(JsonFormatter):
    """JSON lines whose time is ISO 8601 in UTC with its offset (2026-12-03T08:38:38.123+00:00)."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")


def configure_json_logging(level: int = logging.INFO, stream: Any = None) -> logging.Handler:
    """Every log line as one JSON object, qledger's from ``level`` and the libraries' (and
    Python's warnings) from WARNING, on one stream: nothing else is written to it."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(IsoJsonFormatter("{asctime}{levelname}{name}{message}{run_id}{trace_id}{span_id}",
                                          style="{", rename_fields={"levelname": "level", "asctime": "time"}))
    handler.addFilter(RunContextFilter())
    root = logging.getLogger()
    root.addHandler(handler)
    if root.level == logging.NOTSET or root.level > logging.WARNING:
        root.setLevel(logging.WARNING)
    logging.getLogger("qledger").setLevel(level)
    logging.captureWarnings(True)
    return handler


def remove_json_logging(handler: logging.Handler) -> None:
    """Undo ``configure_json_logging``: its handler, and warnings back to where they went."""
    logging.getLogger().removeHandler(handler)
    logging.captureWarnings(False)
