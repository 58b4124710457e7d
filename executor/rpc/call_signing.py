"""Signed call metadata: how a client says who it is on a call that carries no signed command.

``qledger-principal``, ``qledger-key-id``, ``qledger-time`` and ``qledger-signature``: an
Ed25519 signature by a registered key over ``qledger-call-v1 \\n full method \\n time``.  The
client side (an interceptor) lives here; the server side checks it in ``rpc.authz``.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import grpc

from qledger.ledger.keys import SigningKey

SERVICE_PREFIX = "/qledger.v1."
CALL_CONTEXT = "qledger-call-v1"

EXECUTOR_RPCS = frozenset({"SubmitWorkflow", "RerunWorkflow", "CancelRun", "GetRun", "WatchRun", "ListRuns"})


def full_method(rpc: str) -> str:
    """The path gRPC calls an RPC by, which is what a call signature covers."""
    return f"{SERVICE_PREFIX}{'Executor' if rpc in EXECUTOR_RPCS else 'Ledger'}/{rpc}"


def call_message(method: str, issued: str) -> bytes:
    return f"{CALL_CONTEXT}\n{method}\n{issued}".encode()


def call_metadata(key: SigningKey, method: str) -> list[tuple[str, str]]:
    issued = datetime.now(UTC).isoformat()
    return [("qledger-principal", key.principal), ("qledger-key-id", key.key_id), ("qledger-time", issued),
            ("qledger-signature", base64.b64encode(key.sign(call_message(method, issued))).decode())]


class SigningInterceptor(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):  # type: ignore[misc]
    """Client side: sign every call with ``key`` so the server knows who is asking."""

    def __init__(self, key: SigningKey) -> None:
        self.key = key

    def _signed(self, details: Any) -> Any:
        metadata = list(details.metadata or []) + call_metadata(self.key, details.method)
        return _CallDetails(details.method, details.timeout, metadata, details.credentials,
                            getattr(details, "wait_for_ready", None), getattr(details, "compression", None))

    def intercept_unary_unary(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return continuation(self._signed(details), request)

    def intercept_unary_stream(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return continuation(self._signed(details), request)


class _CallDetails(grpc.ClientCallDetails):  # type: ignore[misc]
    def __init__(self, method: str, timeout: float | None, metadata: Sequence[tuple[str, str]],
                 credentials: Any, wait_for_ready: bool | None, compression: Any) -> None:
        self.method, self.timeout, self.metadata = method, timeout, metadata
        self.credentials, self.wait_for_ready, self.compression = credentials, wait_for_ready, compression


def signed_channel(channel: grpc.Channel, key: SigningKey | None) -> grpc.Channel:
    return channel if key is None else grpc.intercept_channel(channel, SigningInterceptor(key))
