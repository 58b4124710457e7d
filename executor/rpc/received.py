"""Request bodies as the server receives them: one that does not parse as its message is
INVALID_ARGUMENT naming ``request`` (gRPC itself would answer INTERNAL, as if the server were
at fault), and the SHA-256 of one that does is what a call signature covers
(``rpc.call_signing``): the bytes on the wire, not a re-serialisation of the parsed message.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from qledger.rpc.call_signing import body_sha256
from qledger.rpc.status import abort
from qledger.rpc.wrapping import wrapped

# Set while a handler runs, in the thread that runs it (gRPC parses and handles in one thread).
_BODY_SHA256: ContextVar[str | None] = ContextVar("qledger_request_body_sha256", default=None)


def received_body_sha256() -> str | None:
    """The digest of the body of the request being handled; None outside a handler."""
    return _BODY_SHA256.get()


@contextmanager
def handling(digest: str) -> Iterator[None]:
    """While a request whose body has SHA-256 ``digest`` is handled."""
    token = _BODY_SHA256.set(digest)
    try:
        yield
    finally:
        _BODY_SHA256.reset(token)


class _Received:
    """A body as parsed, with its digest; or the reason it could not be parsed."""

    def __init__(self, message: Any, digest: str, malformed: str | None = None) -> None:
        self.message, self.digest, self.malformed = message, digest, malformed


class RequestBodyInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    def intercept_service(self, continuation: Callable[..., Any], details: Any) -> Any:
        handler = continuation(details)
        if handler is None or handler.request_streaming or handler.request_deserializer is None:
            return handler
        parse = handler.request_deserializer

        def tolerant(data: bytes) -> _Received:
            try:
                return _Received(parse(data), body_sha256(data))
            except DecodeError as exc:
                return _Received(None, body_sha256(data),
                                 f"the request body is not a {details.method} request: {exc}")

        @contextmanager
        def receiving(received: _Received, context: grpc.ServicerContext) -> Iterator[Any]:
            if received.malformed is not None:
                abort(context, grpc.StatusCode.INVALID_ARGUMENT, received.malformed, "request")
            with handling(received.digest):
                yield received.message

        return wrapped(handler, receiving, tolerant)
