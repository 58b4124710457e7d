"""Client-side helpers for the CLI: submit a workflow file, watch a run, fetch it."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

from qledger.api import qledger_pb2 as pb
from qledger.api import qledger_pb2_grpc as pb_grpc
from qledger.cli.calls import Target
from qledger.ledger.checkpoint import parse_note
from qledger.ledger.keys import SigningKey
from qledger.runs.commands import cancel_command, submit_command


def submit_and_watch(server: Target, key: SigningKey, workflow: dict[str, Any],
                     idempotency_key: str | None, wait: bool,
                     on_entry: Callable[[pb.LedgerEntry], None]) -> pb.Run:
    with server.channel(key) as channel:
        executor = pb_grpc.ExecutorStub(channel)
        ledger = pb_grpc.LedgerStub(channel)
        note = ledger.GetCheckpoint(pb.GetCheckpointRequest(), timeout=30).note
        origin = parse_note(note).checkpoint.origin
        command = submit_command(key, origin, workflow, idempotency_key or str(uuid.uuid4()))
        reply = executor.SubmitWorkflow(pb.SubmitWorkflowRequest(
            command=pb.SignedEnvelope(envelope=command)), timeout=30)
        if wait:
            for entry in executor.WatchRun(pb.WatchRunRequest(run_id=reply.run.run_id)):
                on_entry(entry)
        run: pb.Run = executor.GetRun(pb.GetRunRequest(run_id=reply.run.run_id), timeout=30)
        return run


def get_run(server: Target, run_id: str, key: SigningKey | None = None) -> pb.Run:
    with server.channel(key) as channel:
        run: pb.Run = pb_grpc.ExecutorStub(channel).GetRun(pb.GetRunRequest(run_id=run_id), timeout=30)
        return run


def list_runs(server: Target, request: pb.ListRunsRequest, key: SigningKey | None = None) -> list[pb.Run]:
    with server.channel(key) as channel:
        reply = pb_grpc.ExecutorStub(channel).ListRuns(request, timeout=30)
        return list(reply.runs)


def rerun_and_wait(server: Target, key: SigningKey, run_id: str) -> str:
    """Replay RUN_ID's recorded workflow through RerunWorkflow, wait for it to end, return its id."""
    with server.channel(key) as channel:
        executor = pb_grpc.ExecutorStub(channel)
        ledger = pb_grpc.LedgerStub(channel)
        note = ledger.GetCheckpoint(pb.GetCheckpointRequest(), timeout=30).note
        origin = parse_note(note).checkpoint.origin
        recorded = executor.GetRun(pb.GetRunRequest(run_id=run_id), timeout=30)
        workflow = json.loads(recorded.workflow_json)  # the definition as the ledger recorded it
        command = submit_command(key, origin, workflow, str(uuid.uuid4()), rerun_of=run_id)
        reply = executor.RerunWorkflow(pb.RerunWorkflowRequest(
            run_id=run_id, command=pb.SignedEnvelope(envelope=command)), timeout=30)
        for _ in executor.WatchRun(pb.WatchRunRequest(run_id=reply.run.run_id)):
            pass
        return str(reply.run.run_id)


def remote_report(server: Target, run_id: str, against: str | None, key: SigningKey | None = None
                  ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The server's report JSON for RUN_ID (against another run) and the run's PROV-JSON."""
    with server.channel(key) as channel:
        ledger = pb_grpc.LedgerStub(channel)
        report = ledger.GetReport(pb.GetReportRequest(run_id=run_id, against_run_id=against or ""),
                                  timeout=60)
        lineage = ledger.GetLineage(pb.RunRef(run_id=run_id), timeout=60)
        return json.loads(report.json), json.loads(lineage.prov_json)


def watch(server: Target, run_id: str, key: SigningKey | None,
          on_entry: Callable[[pb.LedgerEntry], None]) -> None:
    """Every entry of the run, as it is recorded, until the run ends."""
    with server.channel(key) as channel:
        for entry in pb_grpc.ExecutorStub(channel).WatchRun(pb.WatchRunRequest(run_id=run_id)):
            on_entry(entry)


def cancel(server: Target, run_id: str, reason: str, key: SigningKey) -> pb.Run:
    """Cancel the run with a command signed by ``key``."""
    with server.channel(key) as channel:
        note = pb_grpc.LedgerStub(channel).GetCheckpoint(pb.GetCheckpointRequest(), timeout=30).note
        command = cancel_command(key, parse_note(note).checkpoint.origin, run_id, reason)
        run: pb.Run = pb_grpc.ExecutorStub(channel).CancelRun(pb.CancelRunRequest(
            command=pb.SignedEnvelope(envelope=command)), timeout=30)
        return run


def checkpoint_since(server: Target, key: SigningKey | None,
                     saved_size: int | None) -> tuple[str, list[bytes]]:
    """The server's current checkpoint note and, when its tree is larger than ``saved_size``, the
    consistency proof from that size to it."""
    with server.channel(key) as channel:
        ledger = pb_grpc.LedgerStub(channel)
        note = ledger.GetCheckpoint(pb.GetCheckpointRequest(), timeout=30).note
        size = parse_note(note).checkpoint.tree_size
        if saved_size is None or size <= saved_size:
            return note, []
        proof = ledger.GetConsistencyProof(pb.GetConsistencyProofRequest(first=saved_size, second=size),
                                           timeout=30)
        return note, list(proof.path)
