"""The client side of the transport: a channel with explicit message limits, TLS or mutual TLS,
client spans, and every call signed by the caller's key."""

from __future__ import annotations

import grpc
from opentelemetry.instrumentation.grpc import client_interceptor
from opentelemetry.instrumentation.grpc.grpcext import intercept_channel

from qledger.ledger.content import MAX_ENTRY_BYTES
from qledger.ledger.keys import SigningKey
from qledger.rpc.call_signing import signed_channel

# A command is one signed entry; allow it with headroom, and refuse anything larger early.
MAX_RECEIVE_BYTES = 2 * MAX_ENTRY_BYTES
MAX_SEND_BYTES = 8 * MAX_ENTRY_BYTES


def client_channel(address: str, root_ca: bytes | None = None, cert: bytes | None = None,
                   key: bytes | None = None, server_name: str | None = None,
                   signer: SigningKey | None = None) -> grpc.Channel:
    """A channel with explicit message limits; TLS when ``root_ca`` is given (mTLS with cert+key);
    every call signed by ``signer`` when given (the caller's identity for authorisation)."""
    options: list[tuple[str, int | str]] = [("grpc.max_receive_message_length", MAX_SEND_BYTES),
               ("grpc.max_send_message_length", MAX_RECEIVE_BYTES)]
    if root_ca is None:
        return _traced(signed_channel(grpc.insecure_channel(address, options=options), signer))
    if server_name:
        options.append(("grpc.ssl_target_name_override", server_name))
    credentials = grpc.ssl_channel_credentials(root_certificates=root_ca, private_key=key,
                                               certificate_chain=cert)
    return _traced(signed_channel(grpc.secure_channel(address, credentials, options=options), signer))


def _traced(channel: grpc.Channel) -> grpc.Channel:
    """Client spans, and the W3C trace context in the call's metadata for the server to continue."""
    return intercept_channel(channel, client_interceptor())
