"""The role matrix: every RPC called by every role, over a real socket, allowed or denied as
specified, and every denial recorded as a signed ledger entry."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from typer.testing import CliRunner

from qledger.api import qledger_pb2 as pb
from qledger.api import qledger_pb2_grpc as pb_grpc
from qledger.cli import app as cli
from qledger.ledger import dsse
from qledger.ledger.admin import ROOT
from qledger.ledger.artifacts import artifact_refs
from qledger.ledger.keys import SigningKey
from qledger.rpc.authz import ACTIONS
from qledger.rpc.call_signing import call_metadata
from qledger.rpc.channel import client_channel
from qledger.runs.commands import cancel_command, submit_command
from tests.executor.rpc.conftest import ALPHA, EXPECTED, Governed, audit_entries, refusal_counts


def calls(origin: str, key: SigningKey, run_id: str, artifact: str) -> dict[str, Callable[[Any, Any], Any]]:
    """One call of each RPC, as ``key`` would make it, on project alpha's run (and one of its
    artifacts)."""
    def command(rerun: bool = False) -> pb.SignedEnvelope:
        return pb.SignedEnvelope(envelope=submit_command(key, origin, ALPHA, str(uuid.uuid4()),
                                                         rerun_of=run_id if rerun else None))
    return {
        "SubmitWorkflow": lambda ex, _: ex.SubmitWorkflow(pb.SubmitWorkflowRequest(command=command())),
        "RerunWorkflow": lambda ex, _: ex.RerunWorkflow(pb.RerunWorkflowRequest(run_id=run_id,
                                                                                command=command(True))),
        "CancelRun": lambda ex, _: ex.CancelRun(pb.CancelRunRequest(command=pb.SignedEnvelope(
            envelope=cancel_command(key, origin, run_id, "matrix")))),
        "GetRun": lambda ex, _: ex.GetRun(pb.GetRunRequest(run_id=run_id)),
        "WatchRun": lambda ex, _: list(ex.WatchRun(pb.WatchRunRequest(run_id=run_id))),
        "ListRuns": lambda ex, _: ex.ListRuns(pb.ListRunsRequest(limit=10)),
        "GetArtifact": lambda ex, _: ex.GetArtifact(pb.GetArtifactRequest(run_id=run_id, sha256=artifact)),
        "GetCheckpoint": lambda _, lg: lg.GetCheckpoint(pb.GetCheckpointRequest()),
        "GetEntry": lambda _, lg: lg.GetEntry(pb.GetEntryRequest(position=1)),
        "StreamEntries": lambda _, lg: list(lg.StreamEntries(pb.StreamEntriesRequest(from_position=1,
                                                                                      limit=3))),
        "GetInclusionProof": lambda _, lg: lg.GetInclusionProof(pb.GetInclusionProofRequest(position=1)),
        "GetInclusionProofs": lambda _, lg: lg.GetInclusionProofs(pb.GetInclusionProofsRequest(
            positions=[1, 2])),
        "GetConsistencyProof": lambda _, lg: lg.GetConsistencyProof(pb.GetConsistencyProofRequest(
            first=1, second=2)),
        "ExportBundle": lambda _, lg: lg.ExportBundle(pb.RunRef(run_id=run_id)),
        "GetLineage": lambda _, lg: lg.GetLineage(pb.RunRef(run_id=run_id)),
        "GetReport": lambda _, lg: lg.GetReport(pb.GetReportRequest(run_id=run_id)),
    }


def test_every_rpc_by_every_role(governed: Governed) -> None:
    service, signers, run_id = governed
    assert set(EXPECTED) == set(ACTIONS), "the matrix covers every RPC"
    artifact = next(ref["sha256"] for row in service.app.source().stream_entries(uuid.UUID(run_id), 0)
                    for ref in artifact_refs(json.loads(dsse.parse(row.state or b"").payload)["payload"]))
    denials = []
    for who, key in signers.items():
        with client_channel(service.running.address, signer=key) as channel:
            executor, ledger = pb_grpc.ExecutorStub(channel), pb_grpc.LedgerStub(channel)
            for rpc, call in calls(service.origin, key, run_id, artifact).items():
                try:
                    call(executor, ledger)
                    outcome = "allowed"
                except grpc.RpcError as exc:
                    code = exc.code()  # type: ignore[attr-defined]
                    assert code == grpc.StatusCode.PERMISSION_DENIED, (who, rpc, exc.details())  # type: ignore[attr-defined]
                    outcome = "denied"
                    denials.append((who, rpc))
                assert outcome == ("allowed" if who in EXPECTED[rpc] else "denied"), (who, rpc)
    recorded = [(e["payload"]["subject"], e["payload"]["action"]) for e in audit_entries(service)
                if e["payload"]["kind"] == "access_denied"]
    assert sorted(recorded) == sorted(denials)
    for entry in audit_entries(service):
        assert entry["principal"] == "executor-1" and entry["timestamp"]  # who recorded it, and when


def test_list_runs_shows_only_visible_projects(governed: Governed) -> None:
    service, signers, run_id = governed
    with client_channel(service.running.address, signer=signers["beta-sub"]) as channel:
        assert list(pb_grpc.ExecutorStub(channel).ListRuns(pb.ListRunsRequest()).runs) == []
    with client_channel(service.running.address, signer=signers["aud"]) as channel:
        listed = pb_grpc.ExecutorStub(channel).ListRuns(pb.ListRunsRequest()).runs
        assert [r.run_id for r in listed] == [run_id]


def test_identity_is_never_a_field_the_caller_sets(governed: Governed) -> None:
    service, signers, run_id = governed
    request = pb.GetRunRequest(run_id=run_id)
    with client_channel(service.running.address) as channel:
        stub = pb_grpc.ExecutorStub(channel)
        with pytest.raises(grpc.RpcError) as anonymous:
            stub.GetRun(request, timeout=10)
        assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
        # Claiming to be "adm" without adm's key: the signature is by nobody's key.
        body = request.SerializeToString()
        forged = [(k, "adm" if k == "qledger-principal" else v)
                  for k, v in call_metadata(signers["nobody"], "/qledger.v1.Executor/GetRun", body)]
        with pytest.raises(grpc.RpcError) as claimed:
            stub.GetRun(request, metadata=forged, timeout=10)
        assert claimed.value.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
        # A signature for another method does not carry over.
        other = call_metadata(signers["adm"], "/qledger.v1.Executor/ListRuns", body)
        with pytest.raises(grpc.RpcError) as replayed:
            stub.GetRun(request, metadata=other, timeout=10)
        assert replayed.value.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
    # A revoked key identifies no one any more.
    service.app.revoke_key(ROOT, signers["adm"].key_id, "rotated")
    with client_channel(service.running.address, signer=signers["adm"]) as channel, \
            pytest.raises(grpc.RpcError) as revoked:
        pb_grpc.ExecutorStub(channel).GetRun(request, timeout=10)
    assert revoked.value.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
    # One entry for the first denial of anonymous GetRun calls from this peer; the other three
    # are counted in the summary of the window.
    kinds = [(e["payload"]["subject"], e["payload"]["kind"]) for e in audit_entries(service)]
    assert kinds.count(("anonymous", "access_denied")) == 1
    assert refusal_counts(service)[("access_denied", "anonymous", "GetRun")] == 4


def test_admins_see_access_events_from_the_cli(governed: Governed, monkeypatch: pytest.MonkeyPatch) -> None:
    service, signers, run_id = governed
    monkeypatch.setenv("QLEDGER_HOME", str(service.home))
    with client_channel(service.running.address, signer=signers["nobody"]) as channel, \
            pytest.raises(grpc.RpcError):
        pb_grpc.ExecutorStub(channel).GetRun(pb.GetRunRequest(run_id=run_id), timeout=10)
    store = service.app.store.url
    shown = CliRunner().invoke(cli, ["audit-events", "--kind", "access_denied", "--store", store])
    assert shown.exit_code == 0, shown.output
    events = json.loads(shown.output)
    who_what = [(e["subject"], e["action"], e["recorded_by"]) for e in events]
    assert who_what == [("nobody", "GetRun", "executor-1")]
    assert events[0]["at"] and "no role" in events[0]["reason"]
    roles = json.loads(CliRunner().invoke(cli, ["roles", "list", "--store", store]).output)
    assert roles["sub"] == [["submitter", "alpha"]] and "nobody" not in roles


def test_an_unidentified_caller_cannot_tell_which_runs_exist(governed: Governed) -> None:
    """Every RPC that names a run refuses an anonymous caller the same way whether the run
    exists or not: who is calling is settled before anything the request names is looked up."""
    service, signers, run_id = governed
    missing = str(uuid.uuid4())
    stranger = signers["nobody"]  # signs commands with a key the ledger has, and has no role
    with client_channel(service.running.address) as channel:
        executor, ledger = pb_grpc.ExecutorStub(channel), pb_grpc.LedgerStub(channel)
        for named in (run_id, missing):
            lookups = {name: call for name, call in calls(service.origin, stranger, named, "00" * 32).items()
                       if name in ("GetRun", "WatchRun", "GetArtifact", "ExportBundle", "GetLineage",
                                   "GetReport")}
            lookups["GetReport --against"] = lambda _, lg, named=named: lg.GetReport(  # type: ignore[misc]
                pb.GetReportRequest(run_id=run_id, against_run_id=named))
            for rpc, call in lookups.items():
                with pytest.raises(grpc.RpcError) as refused:
                    call(executor, ledger)
                assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED, (rpc, named)  # type: ignore[attr-defined]
    # A rerun command by a key the ledger does not know is refused as such, run or no run.
    unknown = SigningKey.generate("intruder")
    with client_channel(service.running.address) as channel:
        for named in (run_id, missing):
            command = submit_command(unknown, service.origin, ALPHA, str(uuid.uuid4()), rerun_of=named)
            with pytest.raises(grpc.RpcError) as refused:
                pb_grpc.ExecutorStub(channel).RerunWorkflow(pb.RerunWorkflowRequest(
                    run_id=named, command=pb.SignedEnvelope(envelope=command)), timeout=10)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED, named  # type: ignore[attr-defined]


def test_a_report_against_another_run_identifies_its_caller_once(governed: Governed) -> None:
    """A call signature's nonce is spent when the caller is identified: a call that reads two
    runs must not identify it twice."""
    service, signers, run_id = governed
    with client_channel(service.running.address, signer=signers["aud"]) as channel:
        report = pb_grpc.LedgerStub(channel).GetReport(pb.GetReportRequest(run_id=run_id,
                                                                           against_run_id=run_id))
        assert json.loads(report.json)["comparison"]["verdict"] == "reproduced exactly"
        with pytest.raises(grpc.RpcError) as missing:
            pb_grpc.LedgerStub(channel).GetReport(pb.GetReportRequest(run_id=run_id,
                                                                      against_run_id=str(uuid.uuid4())))
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
