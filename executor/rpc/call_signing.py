"""Signed call metadata: how a client says who it is on a call that carries no signed command.

``qledger-principal``, ``qledger-key-id``, ``qledger-time``, ``qledger-nonce`` and
``qledger-signature``: an Ed25519 signature by a registered key over

    qledger-call-v2 LF full method LF time LF nonce LF hex SHA-256 of the request body

The body digest binds the signature to this one request, and the nonce (which the server
remembers for as long as the time is acceptable) to this one call: captured metadata works
neither with another body nor a second time.  The client side (an interceptor) and the
server's memory of nonces live here; the server checks a signature in ``rpc.authz``.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import grpc

from qledger.api import qledger_pb2 as pb
from qledger.ledger.keys import SigningKey

SERVICE_PREFIX = "/qledger.v1."
CALL_CONTEXT = "qledger-call-v2"
NONCE_BYTES = 16

EXECUTOR_RPCS = frozenset(pb.DESCRIPTOR.services_by_name["Executor"].methods_by_name)


def full_method(rpc: str) -> str:
    """The path gRPC calls an RPC by, which is what a call signature covers."""
    return f"{SERVICE_PREFIX}{'Executor' if rpc in EXECUTOR_RPCS else 'Ledger'}/{rpc}"


def body_sha256(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def call_message(method: str, issued: str, nonce: str, body_digest: str) -> bytes:
    return f"{CALL_CONTEXT}\n{method}\n{issued}\n{nonce}\n{body_digest}".encode()


def call_metadata(key: SigningKey, method: str, body: bytes) -> list[tuple[str, str]]:
    """The metadata that signs one call of ``method`` whose serialised request is ``body``."""
    issued = datetime.now(UTC).isoformat()
    nonce = secrets.token_urlsafe(NONCE_BYTES)
    signature = key.sign(call_message(method, issued, nonce, body_sha256(body)))
    return [("qledger-principal", key.principal), ("qledger-key-id", key.key_id), ("qledger-time", issued),
            ("qledger-nonce", nonce), ("qledger-signature", base64.b64encode(signature).decode())]


class SeenNonces:
    """The nonces of accepted call signatures, each kept for ``keep_seconds`` (longer than the
    time a signature is acceptable for), so that a replayed call is refused.  Only calls whose
    signature verified add one, so only holders of registered keys can fill it."""

    def __init__(self, keep_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.keep_seconds, self.clock = keep_seconds, clock
        self._until: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()
        self._next_sweep = 0.0

    def first_use(self, key_id: str, nonce: str) -> bool:
        """Remember (key, nonce); False if it was already used within the window."""
        now = self.clock()
        with self._lock:
            if now >= self._next_sweep:
                self._until = {k: t for k, t in self._until.items() if t > now}
                self._next_sweep = now + self.keep_seconds / 10
            if self._until.get((key_id, nonce), 0.0) > now:
                return False
            self._until[(key_id, nonce)] = now + self.keep_seconds
            return True

    def __len__(self) -> int:
        return len(self._until)


class SigningInterceptor(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):  # type: ignore[misc]
    """Client side: sign every call with ``key`` so the server knows who is asking."""

    def __init__(self, key: SigningKey) -> None:
        self.key = key

    def _signed(self, details: Any, request: Any) -> Any:
        # The channel serialises the request the same way, so the server digests these bytes.
        body = request.SerializeToString()
        metadata = list(details.metadata or []) + call_metadata(self.key, details.method, body)
        return _CallDetails(details.method, details.timeout, metadata, details.credentials,
                            getattr(details, "wait_for_ready", None), getattr(details, "compression", None))

    def intercept_unary_unary(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return continuation(self._signed(details, request), request)

    def intercept_unary_stream(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return continuation(self._signed(details, request), request)


class _CallDetails(grpc.ClientCallDetails):  # type: ignore[misc]
    def __init__(self, method: str, timeout: float | None, metadata: Sequence[tuple[str, str]],
                 credentials: Any, wait_for_ready: bool | None, compression: Any) -> None:
        self.method, self.timeout, self.metadata = method, timeout, metadata
        self.credentials, self.wait_for_ready, self.compression = credentials, wait_for_ready, compression


def signed_channel(channel: grpc.Channel, key: SigningKey | None) -> grpc.Channel:
    return channel if key is None else grpc.intercept_channel(channel, SigningInterceptor(key))
