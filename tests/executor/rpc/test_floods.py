"""Floods cost bounded ledger space: unsigned and wrongly signed calls, and a principal calling
too fast, are refused with RESOURCE_EXHAUSTED and RetryInfo once past their limits, and the
ledger gains one entry per kind of refusal per window plus summaries that count the rest."""

from __future__ import annotations

import base64
import json
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from typer.testing import CliRunner

from qledger.api import qledger_pb2 as pb
from qledger.api import qledger_pb2_grpc as pb_grpc
from qledger.cli import app as cli
from qledger.governance.changes import grant_role
from qledger.governance.flood_control import FloodLimits
from qledger.governance.policy import AuditSummary
from qledger.ledger.admin import ROOT, add_key
from qledger.ledger.keys import KeyStore
from qledger.ledger.verify import verify
from qledger.rpc.call_signing import call_metadata
from qledger.rpc.channel import client_channel
from qledger.rpc.status import retry_delay
from qledger.runs.workflow import DEFAULT_PROJECT
from tests.conftest import ONLY_POSTGRES
from tests.executor.conftest import ServiceFactory
from tests.executor.rpc.conftest import audit_entries, refusal_counts

pytestmark = pytest.mark.reliability

FLOOD = 1000


@ONLY_POSTGRES  # the production store records the summaries (time budget)
def test_a_flood_of_unsigned_and_forged_calls_is_refused_and_summarised(
        service_factory: ServiceFactory) -> None:
    service = service_factory(authorize=True, flood=FloodLimits(denials_per_second=2, burst_seconds=5,
                                                                window_seconds=600))
    forger = add_key(service.app, KeyStore(service.home), "forger", "client")
    size = service.app.tree_size()
    request = pb.GetCheckpointRequest()
    forged = [(k, base64.b64encode(bytes(64)).decode() if k == "qledger-signature" else v)
              for k, v in call_metadata(forger, "/qledger.v1.Ledger/GetCheckpoint",
                                        request.SerializeToString())]
    channels = [client_channel(service.running.address) for _ in range(4)]  # new connections each

    def call(i: int) -> tuple[grpc.StatusCode, float | None]:
        stub = pb_grpc.LedgerStub(channels[i % 4])
        try:
            stub.GetCheckpoint(request, metadata=forged if i % 2 else None, timeout=10)
        except grpc.RpcError as exc:
            return exc.code(), retry_delay(exc)  # type: ignore[attr-defined]
        return grpc.StatusCode.OK, None

    try:
        with ThreadPoolExecutor(8) as pool:
            outcomes = list(pool.map(call, range(FLOOD)))
    finally:
        for channel in channels:
            channel.close()
    codes = [code for code, _ in outcomes]
    assert set(codes) == {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.RESOURCE_EXHAUSTED}
    # The burst (2/s for 5 s) and what the rate refilled during the flood were denied one by one;
    # the rest was refused as too many, each saying when to try again.
    assert codes.count(grpc.StatusCode.UNAUTHENTICATED) <= 10 + 2 * 30
    assert all(delay and delay >= 1 for code, delay in outcomes if code == grpc.StatusCode.RESOURCE_EXHAUSTED)
    # Ledger growth is bounded: the first denial and the first rate limiting in full, and after
    # the window (here: when the server summarises at stop) one summary of each.
    counts = refusal_counts(service)
    assert service.app.tree_size() - size <= 4
    assert counts[("access_denied", "anonymous", "GetCheckpoint")] == \
        codes.count(grpc.StatusCode.UNAUTHENTICATED)
    assert counts[("rate_limited", "anonymous", "GetCheckpoint")] == \
        codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED)
    [summary, *_] = [e["payload"] for e in audit_entries(service, AuditSummary.Summarised)]  # type: ignore[attr-defined]
    assert summary["peer"] == "127.0.0.1" and summary["window_start"] < summary["window_end"]
    assert verify(service.app.source()).ok
    # Admins see the flood: its first refusal, and a summary with the count and the peer.
    store = service.app.store.url
    shown = CliRunner().invoke(cli, ["audit-events", "--kind", "rate_limited", "--store", store])
    assert shown.exit_code == 0, shown.output
    first, counted = json.loads(shown.output)
    assert not first["summary"] and "[peer 127.0.0.1]" in first["reason"]
    assert counted["summary"] and counted["count"] == codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) - 1


def test_a_principal_calling_too_fast_is_slowed_down(service_factory: ServiceFactory) -> None:
    service = service_factory(authorize=True, flood=FloodLimits(calls_per_second=5, burst_seconds=2))
    grant_role(service.app, KeyStore(service.home).load(ROOT), "alice", "submitter", DEFAULT_PROJECT)
    with client_channel(service.running.address, signer=service.client) as channel:
        stub = pb_grpc.LedgerStub(channel)
        codes = []
        for _ in range(40):
            try:
                stub.GetCheckpoint(pb.GetCheckpointRequest(), timeout=10)
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as exc:
                codes.append(exc.code())  # type: ignore[attr-defined]
                assert retry_delay(exc) == 1
    assert 10 <= codes.count(grpc.StatusCode.OK) < 20  # the burst, and what refilled meanwhile
    assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == 40 - codes.count(grpc.StatusCode.OK)
    assert refusal_counts(service)[("rate_limited", "alice", "GetCheckpoint")] == \
        codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED)


def test_forged_cancel_commands_are_refused_like_forged_calls(service_factory: ServiceFactory) -> None:
    """A cancel command signed by a key the ledger does not have is an unidentified call: the
    first is recorded, the rest counted, and past the peer's limit the refusal is
    RESOURCE_EXHAUSTED, whether the run it names exists or not."""
    from qledger.ledger.keys import SigningKey
    from qledger.runs.commands import cancel_command

    service = service_factory(authorize=True, flood=FloodLimits(denials_per_second=2, burst_seconds=5,
                                                                window_seconds=600))
    intruder = SigningKey.generate("intruder")
    size = service.app.tree_size()
    codes = []
    with client_channel(service.running.address) as channel:
        stub = pb_grpc.ExecutorStub(channel)
        for i in range(30):
            command = cancel_command(intruder, service.origin, "0" * 8 + f"-0000-0000-0000-{i:012d}", "x")
            try:
                stub.CancelRun(pb.CancelRunRequest(command=pb.SignedEnvelope(envelope=command)), timeout=10)
            except grpc.RpcError as exc:
                codes.append(exc.code())  # type: ignore[attr-defined]
    refused, limited = grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.RESOURCE_EXHAUSTED
    assert len(codes) == 30 and set(codes) == {refused, limited}
    counts = refusal_counts(service)
    assert counts[("access_denied", "anonymous", "CancelRun")] == codes.count(refused)
    assert counts[("rate_limited", "anonymous", "CancelRun")] == codes.count(limited)
    assert service.app.tree_size() - size <= 4  # a first entry and a summary of each kind
