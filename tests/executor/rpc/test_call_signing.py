"""Call signatures cover one request body and are used once: captured metadata replays neither
on another connection nor with another body.  Tamper tests of every signed part, and the
server's memory of nonces."""

from __future__ import annotations

import base64
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qledger.api import qledger_pb2 as pb
from qledger.api import qledger_pb2_grpc as pb_grpc
from qledger.rpc.authz import Authorizer
from qledger.rpc.call_signing import SeenNonces, body_sha256, call_metadata
from qledger.rpc.channel import client_channel
from qledger.rpc.received import handling
from tests.executor.rpc.conftest import Governed, refusal_counts

pytestmark = pytest.mark.reliability

GET_RUN = "/qledger.v1.Executor/GetRun"


def refused(call: Any) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code()  # type: ignore[attr-defined, no-any-return]


def test_captured_call_metadata_works_once_and_only_for_its_body(governed: Governed) -> None:
    service, signers, run_id = governed
    request = pb.GetRunRequest(run_id=run_id)
    captured = call_metadata(signers["aud"], GET_RUN, request.SerializeToString())
    denied_before = refusal_counts(service)[("access_denied", "anonymous", "GetRun")]
    with client_channel(service.running.address) as channel:
        assert pb_grpc.ExecutorStub(channel).GetRun(request, metadata=captured, timeout=10).run_id == run_id
    with client_channel(service.running.address) as fresh:  # a new connection changes nothing
        stub = pb_grpc.ExecutorStub(fresh)
        assert refused(lambda: stub.GetRun(request, metadata=captured, timeout=10)) == \
            grpc.StatusCode.UNAUTHENTICATED
        # Fresh metadata signed for one request does not carry another.
        first, second = pb.GetEntryRequest(position=1), pb.GetEntryRequest(position=2)
        for_first = call_metadata(signers["aud"], "/qledger.v1.Ledger/GetEntry", first.SerializeToString())
        ledger = pb_grpc.LedgerStub(fresh)
        assert refused(lambda: ledger.GetEntry(second, metadata=for_first, timeout=10)) == \
            grpc.StatusCode.UNAUTHENTICATED
        # A streaming call is covered the same way.
        entries = pb.StreamEntriesRequest(from_position=1)
        streamed = call_metadata(signers["aud"], "/qledger.v1.Ledger/StreamEntries",
                                 entries.SerializeToString())
        assert list(ledger.StreamEntries(entries, metadata=streamed, timeout=10))
        assert refused(lambda: list(ledger.StreamEntries(entries, metadata=streamed, timeout=10))) == \
            grpc.StatusCode.UNAUTHENTICATED
    # Signed by the interceptor, every call carries fresh metadata and goes through.
    with client_channel(service.running.address, signer=signers["aud"]) as channel:
        stub = pb_grpc.ExecutorStub(channel)
        assert all(stub.GetRun(request, timeout=10).run_id == run_id for _ in range(3))
    counts = refusal_counts(service)
    assert counts[("access_denied", "anonymous", "GetRun")] == denied_before + 1
    assert counts[("access_denied", "anonymous", "GetEntry")] == 1
    assert counts[("access_denied", "anonymous", "StreamEntries")] == 1


class Context:
    """What the authorizer reads of a call: no client certificate, and the metadata."""

    def __init__(self, metadata: list[tuple[str, str]]) -> None:
        self.metadata = metadata

    def auth_context(self) -> dict[str, Any]:
        return {}

    def invocation_metadata(self) -> list[tuple[str, str]]:
        return self.metadata


SIGNED_PARTS = ["qledger-principal", "qledger-key-id", "qledger-time", "qledger-nonce", "qledger-signature",
                "method", "body"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(part=st.sampled_from(SIGNED_PARTS), body=st.binary(max_size=64), flip=st.integers(0, 7))
def test_a_signature_with_any_part_changed_identifies_nobody(governed: Governed, part: str, body: bytes,
                                                            flip: int) -> None:
    service, signers, _ = governed
    authz = Authorizer(service.app, "executor-1", enabled=True)
    metadata = call_metadata(signers["aud"], GET_RUN, body)
    method, digest = "GetRun", body_sha256(body)
    if part == "method":
        method = "ListRuns"
    elif part == "body":
        digest = body_sha256(body + bytes([flip]))
    else:
        value = dict(metadata)[part]
        if part == "qledger-signature":  # one bit of the signature itself
            raw = bytearray(base64.b64decode(value))
            raw[flip * 8] ^= 1 << flip
            changed = base64.b64encode(bytes(raw)).decode()
        elif part == "qledger-time":  # a second later or earlier: still within the skew allowed
            changed = value[:18] + str((int(value[18]) + 1 + flip) % 10) + value[19:]
        else:
            changed = value[:-1] + ("A" if value[-1] != "A" else "B")
        metadata = [(k, changed if k == part else v) for k, v in metadata]
    with handling(digest):
        assert authz.identify(Context(metadata), method) is None  # type: ignore[arg-type]
    pristine = call_metadata(signers["aud"], GET_RUN, body)
    with handling(body_sha256(body)):
        assert authz.identify(Context(pristine), "GetRun") == "aud"  # type: ignore[arg-type]
        assert authz.identify(Context(pristine), "GetRun") is None  # type: ignore[arg-type]


def test_nonces_are_remembered_for_their_window_then_forgotten() -> None:
    now = [0.0]
    seen = SeenNonces(keep_seconds=100, clock=lambda: now[0])
    assert seen.first_use("k", "n1") and not seen.first_use("k", "n1")
    assert seen.first_use("other key", "n1")  # a nonce is one key's
    now[0] = 99.0
    assert not seen.first_use("k", "n1")
    now[0] = 101.0
    assert seen.first_use("k", "n1")  # past the window: its signature's time is refused anyway
    now[0] = 500.0
    seen.first_use("k", "n2")
    assert len(seen) == 1  # expired nonces do not pile up
