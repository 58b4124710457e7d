"""The gRPC servicers: Executor (commands in, runs out) and Ledger (entries, checkpoints, proofs)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast
from uuid import UUID

import grpc
from eventsourcing.application import AggregateNotFoundError
from eventsourcing.persistence import IntegrityError, PersistenceError, StoredEvent

from executor.aer import run_workflow
from executor.api import qledger_pb2 as pb
from executor.api import qledger_pb2_grpc as pb_grpc
from executor.errors import abort, status_for
from executor.run import RUN_SUBMITTED_TYPE, TERMINAL, Run, run_id_for
from executor.workflow import WorkflowError, parse_workflow, workflow_sha256
from ledger import dsse
from ledger.app import LedgerApp
from ledger.content import EntryContent
from ledger.errors import QledgerError
from ledger.keys import SigningKey
from ledger.source import EntryRow
from ledger.store.reader import StoreSource

WATCH_POLL_SECONDS = 0.05
WATCH_LIMIT_SECONDS = 600.0
MAX_IDEMPOTENCY_KEY = 128


def entry_message(row: EntryRow) -> pb.LedgerEntry:
    return pb.LedgerEntry(position=row.position, envelope=row.state or b"", leaf_hash=row.leaf_hash,
                          chain_hash=row.chain_hash, event_type=row.topic or "",
                          stream_id=row.originator_id or "", stream_version=row.originator_version or 0)


class RunExecutor:
    """Executes submitted runs on a thread pool, recording each step signed by the executor."""

    def __init__(self, app: LedgerApp, key: SigningKey, workers: int) -> None:
        self.app, self.key = app, key
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="qledger-run")

    def schedule(self, run_id: UUID) -> None:
        self.pool.submit(self.execute, run_id)

    def execute(self, run_id: UUID) -> None:
        run = cast(Run, self.app.repository.get(run_id))
        step = "workflow"
        try:
            spec = parse_workflow(run.workflow)
            for step, record in run_workflow(spec):
                run.record_step(principal=self.key.principal, step=step, record=record)
                self.app.save(run)
            run.complete(principal=self.key.principal, summary={"steps": len(run.steps)})
            self.app.save(run)
        except Exception as exc:  # every failure is recorded with what is needed to diagnose it
            run = cast(Run, self.app.repository.get(run_id))
            run.fail(principal=self.key.principal, error_class=type(exc).__name__,
                     message=str(exc)[:2000], step=step)
            self.app.save(run)

    def close(self) -> None:
        self.pool.shutdown(wait=True)


class ExecutorService(pb_grpc.ExecutorServicer):
    def __init__(self, app: LedgerApp, runs: RunExecutor) -> None:
        self.app, self.runs = app, runs
        self.source = cast(StoreSource, app.source())

    def _run(self, run_id: UUID) -> Run | None:
        try:
            return cast(Run, self.app.repository.get(run_id))
        except AggregateNotFoundError:
            return None

    @staticmethod
    def run_message(run: Run) -> pb.Run:
        return pb.Run(run_id=str(run.id), workflow=str(run.workflow.get("name", "")), status=run.status,
                      steps=run.steps, submitted_by=run.submitted_by, error=run.error,
                      version=run.version)

    def SubmitWorkflow(self, request: pb.SubmitWorkflowRequest,
                       context: grpc.ServicerContext) -> pb.SubmitWorkflowResponse:
        data = request.command.envelope
        if not data:
            abort(context, grpc.StatusCode.INVALID_ARGUMENT, "a signed command is required",
                  "command.envelope")
        try:
            content = EntryContent.from_bytes(dsse.parse(data).payload)
        except QledgerError as exc:
            abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc), "command.envelope")
        if content.event_type != RUN_SUBMITTED_TYPE or content.stream_version != 1:
            abort(context, grpc.StatusCode.INVALID_ARGUMENT,
                  f"a submission is a {RUN_SUBMITTED_TYPE} entry at stream version 1",
                  "command.envelope")
        payload = content.payload
        key = payload.get("idempotency_key")
        if not isinstance(key, str) or not 0 < len(key) <= MAX_IDEMPOTENCY_KEY:
            abort(context, grpc.StatusCode.INVALID_ARGUMENT,
                  f"idempotency_key must be 1..{MAX_IDEMPOTENCY_KEY} characters", "idempotency_key")
        run_id = run_id_for(content.principal, key)
        if content.stream_id != str(run_id):
            abort(context, grpc.StatusCode.INVALID_ARGUMENT,
                  "stream id must be the run id derived from principal and idempotency key",
                  "command.envelope")
        try:
            parse_workflow(payload.get("workflow"))
        except WorkflowError as exc:
            abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc), f"workflow.{exc.field}")
        if payload.get("workflow_sha256") != workflow_sha256(payload["workflow"]):
            abort(context, grpc.StatusCode.INVALID_ARGUMENT, "workflow_sha256 does not match the workflow",
                  "workflow_sha256")
        existing = self._run(run_id)
        if existing is None:
            try:
                self.app.recorder.insert_events([StoredEvent(run_id, 1, content.event_type, data)])
            except IntegrityError:
                existing = self._run(run_id)  # a concurrent submission with the same key won
            except QledgerError as exc:
                abort(context, status_for(exc), exc.one_line())
            except PersistenceError as exc:
                abort(context, grpc.StatusCode.UNAVAILABLE, f"ledger store unavailable: {exc}")
            else:
                self.runs.schedule(run_id)
                created = self._run(run_id)
                assert created is not None
                return pb.SubmitWorkflowResponse(run=self.run_message(created), created=True)
        assert existing is not None
        if existing.workflow_sha256 != payload["workflow_sha256"]:
            abort(context, grpc.StatusCode.ALREADY_EXISTS,
                  f"idempotency key {key!r} already names run {run_id} with another workflow",
                  "idempotency_key")
        return pb.SubmitWorkflowResponse(run=self.run_message(existing), created=False)

    def _run_or_abort(self, run_id: str, context: grpc.ServicerContext) -> Run:
        try:
            uuid = UUID(run_id)
        except ValueError:
            abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"{run_id!r} is not a run id", "run_id")
        run = self._run(uuid)
        if run is None:
            abort(context, grpc.StatusCode.NOT_FOUND, f"no run {run_id}", "run_id")
        return run

    def GetRun(self, request: pb.GetRunRequest, context: grpc.ServicerContext) -> pb.Run:
        return self.run_message(self._run_or_abort(request.run_id, context))

    def WatchRun(self, request: pb.WatchRunRequest,
                 context: grpc.ServicerContext) -> Iterator[pb.LedgerEntry]:
        run = self._run_or_abort(request.run_id, context)
        after = request.after_version
        deadline = time.monotonic() + WATCH_LIMIT_SECONDS
        while context.is_active() and time.monotonic() < deadline:
            rows = self.source.stream_entries(run.id, after)
            for row in rows:
                yield entry_message(row)
                after = row.originator_version or after
            if not rows:
                run = cast(Run, self.app.repository.get(run.id))
                if run.status in TERMINAL and run.version <= after:
                    return
                time.sleep(WATCH_POLL_SECONDS)


class LedgerService(pb_grpc.LedgerServicer):
    def __init__(self, app: LedgerApp, checkpoint_key: SigningKey | None) -> None:
        self.app, self.checkpoint_key = app, checkpoint_key
        self.source = cast(StoreSource, app.source())

    def GetEntry(self, request: pb.GetEntryRequest,
                 context: grpc.ServicerContext) -> pb.LedgerEntry:
        row = self.source.entry_at(request.position)
        if row is None:
            abort(context, grpc.StatusCode.NOT_FOUND, f"no entry at position {request.position}",
                  "position")
        return entry_message(row)

    def StreamEntries(self, request: pb.StreamEntriesRequest,
                      context: grpc.ServicerContext) -> Iterator[pb.LedgerEntry]:
        if request.from_position < 1 or request.limit < 0:
            abort(context, grpc.StatusCode.INVALID_ARGUMENT, "from_position >= 1 and limit >= 0",
                  "from_position")
        stop = request.from_position + request.limit - 1 if request.limit else None
        for row in self.source.entries(request.from_position, stop):
            if not context.is_active():
                return
            yield entry_message(row)

    def GetCheckpoint(self, request: pb.GetCheckpointRequest,
                      context: grpc.ServicerContext) -> pb.Checkpoint:
        note = self.app.latest_checkpoint()
        if note is None or int(note.split("\n")[1]) < self.app.tree_size():
            if self.checkpoint_key is None:
                if note is None:
                    abort(context, grpc.StatusCode.FAILED_PRECONDITION, "no checkpoint yet")
            else:
                note = self.app.checkpoint(self.checkpoint_key)
        assert note is not None
        import base64

        lines = note.split("\n")
        return pb.Checkpoint(tree_size=int(lines[1]), root_hash=base64.b64decode(lines[2]), note=note)

    def _proof(self, context: grpc.ServicerContext, make: Any) -> dict[str, Any]:
        try:
            return cast(dict[str, Any], make())
        except QledgerError as exc:
            abort(context, grpc.StatusCode.OUT_OF_RANGE, str(exc), "position")

    def GetInclusionProof(self, request: pb.GetInclusionProofRequest,
                          context: grpc.ServicerContext) -> pb.InclusionProof:
        p = self._proof(context, lambda: self.app.inclusion_proof(request.position,
                                                                  request.tree_size or None))
        return pb.InclusionProof(leaf_index=p["leaf_index"], tree_size=p["tree_size"],
                                 leaf_hash=bytes.fromhex(p["leaf_hash"]),
                                 path=[bytes.fromhex(h) for h in p["inclusion_path"]],
                                 root_hash=bytes.fromhex(p["root_hash"]))

    def GetConsistencyProof(self, request: pb.GetConsistencyProofRequest,
                            context: grpc.ServicerContext) -> pb.ConsistencyProof:
        p = self._proof(context, lambda: self.app.consistency_proof(request.first, request.second))
        return pb.ConsistencyProof(first=p["first"], second=p["second"],
                                   path=[bytes.fromhex(h) for h in p["consistency_path"]],
                                   first_root=bytes.fromhex(p["first_root"]),
                                   second_root=bytes.fromhex(p["second_root"]))
