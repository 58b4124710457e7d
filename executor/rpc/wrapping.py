"""A server interceptor's one move: run a unary-request handler's behaviour, streaming or not,
inside a context manager, which also chooses the message the behaviour gets."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import grpc

# (request as deserialised, context) -> a context manager that yields the behaviour's message
Around = Callable[[Any, grpc.ServicerContext], AbstractContextManager[Any]]


def wrapped(handler: Any, around: Around, request_deserializer: Callable[[bytes], Any] | None = None) -> Any:
    """``handler`` with its behaviour run inside ``around`` (and, when given, its request read
    by ``request_deserializer``)."""
    deserialize = request_deserializer or handler.request_deserializer
    if handler.response_streaming:
        inner_stream = handler.unary_stream

        def stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            with around(request, context) as message:
                yield from inner_stream(message, context)

        return grpc.unary_stream_rpc_method_handler(stream, request_deserializer=deserialize,
                                                    response_serializer=handler.response_serializer)
    inner = handler.unary_unary

    def unary(request: Any, context: grpc.ServicerContext) -> Any:
        with around(request, context) as message:
            return inner(message, context)

    return grpc.unary_unary_rpc_method_handler(unary, request_deserializer=deserialize,
                                               response_serializer=handler.response_serializer)
