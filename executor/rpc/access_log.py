"""One log line per gRPC call: method, status code, duration, peer, and (on requests that
name one) the run, so that ``run_id`` and ``trace_id`` join a call to the run it concerns and
to its trace.  Installed inside the tracing interceptor, so the call's span is current."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import grpc

from qledger.ops.tracing import current_run
from qledger.rpc.wrapping import wrapped

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

        @contextmanager
        def logging_call(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            token = current_run.set(str(getattr(request, "run_id", "") or "") or None)
            started = time.perf_counter()
            try:
                yield request
            finally:
                code = _code(context, failed=sys.exc_info()[0] is not None)
                level = logging.WARNING if code in ("UNKNOWN", "INTERNAL", "DATA_LOSS") else logging.INFO
                if log.isEnabledFor(level):  # every call passes here: build the line only if it is kept
                    log.log(level, "%s %s", method, code, extra={
                        "grpc_method": method, "grpc_code": code, "peer": context.peer(),
                        "duration_ms": round(1000 * (time.perf_counter() - started), 3)})
                current_run.reset(token)

        return wrapped(handler, logging_call)
