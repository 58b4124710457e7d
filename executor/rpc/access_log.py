"""One log line per gRPC call: method, status code, duration, peer, and (on requests that
name one) the run, so that ``run_id`` and ``trace_id`` join a call to the run it concerns and
to its trace.  Installed inside the tracing interceptor, so the call's span is current."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from qledger.ops.tracing import current_run

log = logging.getLogger("qledger.access")


def _code(context: grpc.ServicerContext, failed: bool) -> str:
    code = context.code()  # set by abort; None when the handler returned normally
    if code is None:
        return "UNKNOWN" if failed else "OK"
    return str(code.name) if isinstance(code, grpc.StatusCode) else str(code)


class AccessLogInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    def intercept_service(self, continuation: Callable[..., Any], details: Any) -> Any:
        handler = continuation(details)
        if handler is None or handler.request_streaming:
            return handler
        method = str(details.method)

        def logged(request: Any, context: grpc.ServicerContext, started: float) -> None:
            failed = sys.exc_info()[0] is not None
            code = _code(context, failed)
            log.log(logging.WARNING if code in ("UNKNOWN", "INTERNAL", "DATA_LOSS") else logging.INFO,
                    "%s %s", method, code, extra={
                        "grpc_method": method, "grpc_code": code, "peer": context.peer(),
                        "duration_ms": round(1000 * (time.perf_counter() - started), 3)})

        def run_of(request: Any) -> str | None:
            return str(getattr(request, "run_id", "") or "") or None

        if handler.response_streaming:
            inner_stream = handler.unary_stream

            def stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                token, started = current_run.set(run_of(request)), time.perf_counter()
                try:
                    yield from inner_stream(request, context)
                finally:
                    logged(request, context, started)
                    current_run.reset(token)

            return grpc.unary_stream_rpc_method_handler(
                stream, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
        inner = handler.unary_unary

        def unary(request: Any, context: grpc.ServicerContext) -> Any:
            token, started = current_run.set(run_of(request)), time.perf_counter()
            try:
                return inner(request, context)
            finally:
                logged(request, context, started)
                current_run.reset(token)

        return grpc.unary_unary_rpc_method_handler(
            unary, request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer)
