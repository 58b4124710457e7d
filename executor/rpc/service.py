"""The gRPC servicers: Executor (commands in, runs out) and Ledger (entries, checkpoints, proofs)."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, cast
from uuid import UUID

import grpc
from eventsourcing.application import AggregateNotFoundError
from eventsourcing.persistence import IntegrityError, PersistenceError, StoredEvent

from qledger.api import qledger_pb2 as pb
from qledger.api import qledger_pb2_grpc as pb_grpc
from qledger.governance.policy import ALL_PROJECTS, budget_verdict
from qledger.ledger import dsse
from qledger.ledger.app import LedgerApp
from qledger.ledger.canonical import canonical_bytes, parse_canonical
from qledger.ledger.checkpoint import parse_note
from qledger.ledger.content import EntryContent
from qledger.ledger.errors import NotFoundError, QledgerError
from qledger.ledger.keys import SigningKey
from qledger.ledger.projection import ProjectionRunner
from qledger.ledger.source import EntryRow
from qledger.ledger.store.reader import StoreSource
from qledger.ops.tracing import trace_parent
from qledger.provenance.bundle_export import export_recorded
from qledger.provenance.lineage import document_json, lineage_json, prov_document
from qledger.provenance.lineage_index import artifact_lineage
from qledger.provenance.projections import resolve_run
from qledger.provenance.report import report, run_facts
from qledger.provenance.usage import project_usage
from qledger.rpc.authz import Authorizer
from qledger.rpc.status import abort, abort_exhausted, status_for, store_errors_are_unavailable
from qledger.runs.commands import COMMAND_PAYLOAD_TYPE
from qledger.runs.queue import RunQueue
from qledger.runs.run import RUN_SUBMITTED_TYPE, TERMINAL, Run, run_id_for
from qledger.runs.worker import Worker
from qledger.runs.workflow import WorkflowError, parse_workflow, project_of, reserved_shots, workflow_sha256

WATCH_POLL_SECONDS = 0.05
WATCH_LIMIT_SECONDS = 600.0
MAX_IDEMPOTENCY_KEY = 128


def entry_message(row: EntryRow) -> pb.LedgerEntry:
    return pb.LedgerEntry(position=row.position, envelope=row.state or b"", leaf_hash=row.leaf_hash,
                          chain_hash=row.chain_hash, event_type=row.topic or "",
                          stream_id=row.originator_id or "", stream_version=row.originator_version or 0)


MAX_COMMAND_AGE = timedelta(minutes=10)


class ExecutorService(pb_grpc.ExecutorServicer):
    def __init__(self, app: LedgerApp, worker: Worker, queue: RunQueue, max_pending: int,
                 authz: Authorizer, projections: ProjectionRunner) -> None:
        self.app, self.worker, self.queue, self.max_pending = app, worker, queue, max_pending
        self.authz = authz
        self.executor_principal = worker.key.principal
        self.source = cast(StoreSource, app.source())
        self.projections = projections

    def _run(self, run_id: UUID) -> Run | None:
        try:
            return cast(Run, self.app.repository.get(run_id))
        except AggregateNotFoundError:
            return None

    @staticmethod
    def run_message(run: Run) -> pb.Run:
        return pb.Run(run_id=str(run.id), workflow=str(run.workflow.get("name", "")), status=run.status,
                      steps=run.steps, submitted_by=run.submitted_by, error=run.error,
                      version=run.version, workflow_json=canonical_bytes(run.workflow).decode(),
                      rerun_of=run.rerun_of or "")

    @store_errors_are_unavailable
    def SubmitWorkflow(self, request: pb.SubmitWorkflowRequest,
                       context: grpc.ServicerContext) -> pb.SubmitWorkflowResponse:
        return self._submit(request.command.envelope, context, None)

    def _submit(self, data: bytes, context: grpc.ServicerContext,
                rerun_of: Run | None) -> pb.SubmitWorkflowResponse:
        if not data:
            abort(context, grpc.StatusCode.INVALID_ARGUMENT, "a signed command is required",
                  "command.envelope")
        try:
            envelope = dsse.parse(data)
            content = EntryContent.from_bytes(envelope.payload)
        except QledgerError as exc:
            abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc), "command.envelope")
        if content.event_type != RUN_SUBMITTED_TYPE or content.stream_version != 1:
            abort(context, grpc.StatusCode.INVALID_ARGUMENT,
                  f"a submission is a {RUN_SUBMITTED_TYPE} entry at stream version 1",
                  "command.envelope")
        payload = content.payload
        # The store checks the signature again as it appends: that check guards the ledger,
        # this one decides who is asking (so it is skipped when nobody's identity matters).
        signer = (self.authz.signer(envelope.key_id, envelope.signature_valid, content.principal)
                  if self.authz.enabled else None)
        workflow = payload.get("workflow")
        self.authz.require(context, "RerunWorkflow" if rerun_of else "SubmitWorkflow",
                           project_of(workflow if isinstance(workflow, dict) else {}),
                           principal=signer.principal if signer else None)
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
            parse_workflow(payload.get("workflow"), self.worker.ctx.catalog.names())
        except WorkflowError as exc:
            abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc), f"workflow.{exc.field}")
        if payload.get("workflow_sha256") != workflow_sha256(payload["workflow"]):
            abort(context, grpc.StatusCode.INVALID_ARGUMENT, "workflow_sha256 does not match the workflow",
                  "workflow_sha256")
        if rerun_of is not None and (payload.get("rerun_of") != str(rerun_of.id)
                                     or payload["workflow_sha256"] != rerun_of.workflow_sha256):
            abort(context, grpc.StatusCode.INVALID_ARGUMENT,
                  "a rerun must carry the recorded workflow and name the run it replays", "command.envelope")
        if rerun_of is None and payload.get("rerun_of") is not None:
            abort(context, grpc.StatusCode.INVALID_ARGUMENT, "use RerunWorkflow to replay a run", "rerun_of")
        existing = self._run(run_id)
        if existing is None:
            warning = self._admit(context, payload["workflow"], payload["workflow_sha256"], content.principal)
            pending = self.queue.pending()
            if pending >= self.max_pending:
                abort_exhausted(context, f"{pending} runs are waiting; try again shortly", retry_seconds=2)
            try:
                self.app.recorder.insert_events([StoredEvent(run_id, 1, content.event_type, data)])
            except IntegrityError:
                existing = self._run(run_id)  # a concurrent submission with the same key won
            except QledgerError as exc:
                abort(context, status_for(exc), exc.one_line())
            except PersistenceError as exc:
                abort(context, grpc.StatusCode.UNAVAILABLE, f"ledger store unavailable: {exc}")
            else:
                if warning:
                    self.authz.record("budget_warning", content.principal, "SubmitWorkflow",
                                      project_of(payload["workflow"]), warning)
                self.queue.enqueue(run_id, trace_parent())
                self.worker.wake()
                created = self._run(run_id)
                assert created is not None
                return pb.SubmitWorkflowResponse(run=self.run_message(created), created=True)
        assert existing is not None
        if existing.workflow_sha256 != payload["workflow_sha256"]:
            abort(context, grpc.StatusCode.ALREADY_EXISTS,
                  f"idempotency key {key!r} already names run {run_id} with another workflow",
                  "idempotency_key")
        return pb.SubmitWorkflowResponse(run=self.run_message(existing), created=False)

    def _admit(self, context: grpc.ServicerContext, workflow: dict[str, Any], sha: str,
               submitter: str) -> str:
        """Policy gates before a new run is accepted: approval for restricted backends, then
        the project's budget.  Refusals are recorded; returns a budget warning, if any."""
        policy = self.authz.policies.current()
        project = project_of(workflow)
        execute = workflow["execute"]
        restricted = sorted({execute["backend"], execute.get("fallback_backend")} & policy.restricted)
        experimental = execute.get("priority") == "experimental"  # runs on a simulator instead
        if restricted and not experimental and policy.approved(sha, submitter, project) is None:
            reason = (f"backend {restricted[0]} is restricted: this workflow definition needs an approval "
                      f"by an approver of project {project!r} other than its author and its submitter")
            self.authz.record("approval_required", submitter, "SubmitWorkflow", project, reason)
            abort(context, grpc.StatusCode.PERMISSION_DENIED, reason, "workflow_sha256")
        quota = policy.quotas.get(project)
        if not quota:
            return ""
        self.projections.catch_up(["usage"])
        used = self.projections.read("usage", lambda db: project_usage(db, project))
        verdict = budget_verdict(quota, used, reserved_shots(workflow))
        if verdict.refusal:
            self.authz.record("budget_refused", submitter, "SubmitWorkflow", project, verdict.refusal)
            abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED, verdict.refusal, "workflow.execute.shots")
        return verdict.warning

    @store_errors_are_unavailable
    def RerunWorkflow(self, request: pb.RerunWorkflowRequest,
                      context: grpc.ServicerContext) -> pb.SubmitWorkflowResponse:
        original = self._run_or_abort(request.run_id, context)
        return self._submit(request.command.envelope, context, original)

    @store_errors_are_unavailable
    def CancelRun(self, request: pb.CancelRunRequest,
                  context: grpc.ServicerContext) -> pb.Run:
        data = request.command.envelope
        try:
            envelope = dsse.parse(data)
            body = parse_canonical(envelope.payload)
        except QledgerError as exc:
            abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc), "command.envelope")
        if (envelope.payload_type != COMMAND_PAYLOAD_TYPE or not isinstance(body, dict)
                or body.get("command") != "CancelRun" or body.get("origin") != self.app.origin):
            abort(context, grpc.StatusCode.INVALID_ARGUMENT, "not a CancelRun command for this ledger",
                  "command.envelope")
        key = self.authz.signer(envelope.key_id, envelope.signature_valid)
        if key is None:
            abort(context, grpc.StatusCode.UNAUTHENTICATED, "command signature does not verify with a "
                  "registered, unrevoked key", "command.envelope")
        try:
            issued = datetime.fromisoformat(str(body.get("issued_at")))
        except ValueError:
            abort(context, grpc.StatusCode.INVALID_ARGUMENT, "issued_at must be ISO 8601", "issued_at")
        if abs(datetime.now(UTC) - issued) > MAX_COMMAND_AGE:
            abort(context, grpc.StatusCode.INVALID_ARGUMENT, "command is too old (or from the future)",
                  "issued_at")
        run = self._run_or_abort(str(body.get("run_id")), context)
        self.authz.require(context, "CancelRun", project_of(run.workflow), principal=key.principal)
        may_cancel_any = self.authz.enabled and "admin" in self.authz.policies.current().roles_of(
            key.principal, project_of(run.workflow))
        if body.get("principal") != key.principal or (key.principal not in (run.submitted_by, "root")
                                                      and not may_cancel_any):
            abort(context, grpc.StatusCode.PERMISSION_DENIED,
                  f"{key.principal} may not cancel a run submitted by {run.submitted_by}", "run_id")
        cancel = {"principal": self.executor_principal, "requested_by": key.principal,
                  "command_sha256": hashlib.sha256(data).hexdigest(), "reason": str(body.get("reason", ""))}
        for retry in (False, True):
            if run.status in TERMINAL:
                break
            run.cancel(**cancel)
            try:
                self.app.save(run)
            except IntegrityError:  # a step was recorded meanwhile: cancel at the new version, once
                if retry:
                    raise
                run = cast(Run, self.app.repository.get(run.id))
                continue
            self.worker.changes.notify()
            break
        return self.run_message(run)

    def _run_or_abort(self, run_id: str, context: grpc.ServicerContext) -> Run:
        try:
            uuid = UUID(run_id)
        except ValueError:
            abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"{run_id!r} is not a run id", "run_id")
        run = self._run(uuid)
        if run is None:
            abort(context, grpc.StatusCode.NOT_FOUND, f"no run {run_id}", "run_id")
        return run

    @store_errors_are_unavailable
    def GetRun(self, request: pb.GetRunRequest, context: grpc.ServicerContext) -> pb.Run:
        run = self._run_or_abort(request.run_id, context)
        self.authz.require(context, "GetRun", project_of(run.workflow))
        return self.run_message(run)

    @store_errors_are_unavailable
    def ListRuns(self, request: pb.ListRunsRequest, context: grpc.ServicerContext) -> pb.ListRunsResponse:
        if not 0 <= request.limit <= 1000:
            abort(context, grpc.StatusCode.INVALID_ARGUMENT, "limit must be 0..1000", "limit")
        visible = self.authz.visible_projects(context, "ListRuns")
        runs = [self._run(run_id) for run_id in self.queue.recent(request.limit or 50)]
        return pb.ListRunsResponse(runs=[self.run_message(r) for r in runs if r is not None and (
            visible is None or project_of(r.workflow) in visible)])

    @store_errors_are_unavailable
    def WatchRun(self, request: pb.WatchRunRequest,
                 context: grpc.ServicerContext) -> Iterator[pb.LedgerEntry]:
        run = self._run_or_abort(request.run_id, context)
        self.authz.require(context, "WatchRun", project_of(run.workflow))
        after = request.after_version
        deadline = time.monotonic() + WATCH_LIMIT_SECONDS
        while context.is_active() and time.monotonic() < deadline:
            seen = self.worker.changes.seen()
            rows = self.source.stream_entries(run.id, after)
            for row in rows:
                after = row.originator_version or after
                if row.position > request.after_position:
                    yield entry_message(row)
            if not rows:
                run = cast(Run, self.app.repository.get(run.id))
                if run.status in TERMINAL and run.version <= after:
                    return
                # Woken at once by this process's workers; the timeout covers other executors.
                self.worker.changes.wait(seen, WATCH_POLL_SECONDS)


class LedgerService(pb_grpc.LedgerServicer):
    def __init__(self, app: LedgerApp, checkpoint_key: SigningKey | None, authz: Authorizer,
                 projections: ProjectionRunner, export_key: SigningKey | None = None) -> None:
        self.app, self.checkpoint_key, self.export_key = app, checkpoint_key, export_key
        self.authz, self.projections = authz, projections
        self.source = cast(StoreSource, app.source())

    def _stream(self, run_id: str, context: grpc.ServicerContext, rpc: str,
                field: str = "run_id") -> list[EntryRow]:
        """A run's entries, once the caller is allowed ``rpc`` in the run's project."""
        try:
            stream_id = UUID(run_id)
        except ValueError:
            abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"{run_id!r} is not a run id", field)
        rows = self.source.stream_entries(stream_id, 0)
        if not rows:
            abort(context, grpc.StatusCode.NOT_FOUND, f"no run {run_id}", field)
        submitted = EntryContent.from_bytes(dsse.parse(rows[0].state or b"").payload)
        self.authz.require(context, rpc, project_of(submitted.payload.get("workflow") or {}))
        return rows

    def _run_ref(self, request: pb.RunRef, context: grpc.ServicerContext) -> str:
        """The run a RunRef names: its run_id, or the run that generated its artifact."""
        if bool(request.run_id) == bool(request.artifact):
            abort(context, grpc.StatusCode.INVALID_ARGUMENT, "give exactly one of run_id and artifact",
                  "run_id")
        if request.run_id:
            return str(request.run_id)
        try:
            return str(resolve_run(self.app, self.projections, request.artifact))
        except NotFoundError as exc:
            abort(context, grpc.StatusCode.NOT_FOUND, str(exc), "artifact")

    @store_errors_are_unavailable
    def ExportBundle(self, request: pb.RunRef, context: grpc.ServicerContext) -> pb.Bundle:
        rows = self._stream(self._run_ref(request, context), context, "ExportBundle")
        if self.export_key is None or self.checkpoint_key is None:
            abort(context, grpc.StatusCode.FAILED_PRECONDITION,
                  "this server holds no export or checkpoint key; use `qledger export-bundle`")
        run_id = UUID(rows[0].originator_id or request.run_id)
        data = export_recorded(self.app, run_id, self.export_key, self.checkpoint_key, lineage_json)
        return pb.Bundle(envelope=data)

    @store_errors_are_unavailable
    def GetLineage(self, request: pb.RunRef, context: grpc.ServicerContext) -> pb.Lineage:
        """A run's lineage from its entries; an artifact's (ancestors and descendants, across
        runs) from the lineage projection, brought up to date first."""
        if request.artifact and not request.run_id:
            self.authz.require(context, "GetLineage", ALL_PROJECTS)  # it may span projects
            self.projections.catch_up(["lineage"])
            try:
                graph = self.projections.read("lineage", lambda db: artifact_lineage(db, request.artifact))
            except NotFoundError as exc:
                abort(context, grpc.StatusCode.NOT_FOUND, str(exc), "artifact")
            prov = document_json(prov_document(graph.nodes, graph.relations))
        else:
            rows = self._stream(self._run_ref(request, context), context, "GetLineage")
            prov = lineage_json(self.app.require_origin(), [(r.position, r.state or b"") for r in rows])
        return pb.Lineage(prov_json=json.dumps(prov, sort_keys=True))

    @store_errors_are_unavailable
    def GetReport(self, request: pb.GetReportRequest, context: grpc.ServicerContext) -> pb.Report:
        first = run_facts([r.state or b"" for r in self._stream(request.run_id, context, "GetReport")])
        second = None
        if request.against_run_id:
            second = run_facts([r.state or b"" for r in self._stream(request.against_run_id, context,
                                                                     "GetReport", "against_run_id")])
        return pb.Report(json=json.dumps(report(first, second), sort_keys=True))

    @store_errors_are_unavailable
    def GetEntry(self, request: pb.GetEntryRequest,
                 context: grpc.ServicerContext) -> pb.LedgerEntry:
        self.authz.require(context, "GetEntry", ALL_PROJECTS)
        row = self.source.entry_at(request.position)
        if row is None:
            abort(context, grpc.StatusCode.NOT_FOUND, f"no entry at position {request.position}",
                  "position")
        return entry_message(row)

    @store_errors_are_unavailable
    def StreamEntries(self, request: pb.StreamEntriesRequest,
                      context: grpc.ServicerContext) -> Iterator[pb.LedgerEntry]:
        self.authz.require(context, "StreamEntries", ALL_PROJECTS)
        if request.from_position < 1 or request.limit < 0:
            abort(context, grpc.StatusCode.INVALID_ARGUMENT, "from_position >= 1 and limit >= 0",
                  "from_position")
        stop = request.from_position + request.limit - 1 if request.limit else None
        for row in self.source.entries(request.from_position, stop):
            if not context.is_active():
                return
            yield entry_message(row)

    @store_errors_are_unavailable
    def GetCheckpoint(self, request: pb.GetCheckpointRequest,
                      context: grpc.ServicerContext) -> pb.Checkpoint:
        self.authz.require(context, "GetCheckpoint", ALL_PROJECTS)
        note = self.app.latest_checkpoint()
        if note is None or parse_note(note).checkpoint.tree_size < self.app.tree_size():
            if self.checkpoint_key is None:
                if note is None:
                    abort(context, grpc.StatusCode.FAILED_PRECONDITION, "no checkpoint yet")
            else:
                note = self.app.checkpoint(self.checkpoint_key)
        assert note is not None
        checkpoint = parse_note(note).checkpoint
        return pb.Checkpoint(tree_size=checkpoint.tree_size, root_hash=checkpoint.root_hash, note=note)

    def _proof(self, context: grpc.ServicerContext, make: Any) -> dict[str, Any]:
        try:
            return cast(dict[str, Any], make())
        except QledgerError as exc:
            abort(context, grpc.StatusCode.OUT_OF_RANGE, str(exc), "position")

    @store_errors_are_unavailable
    def GetInclusionProof(self, request: pb.GetInclusionProofRequest,
                          context: grpc.ServicerContext) -> pb.InclusionProof:
        self.authz.require(context, "GetInclusionProof", ALL_PROJECTS)
        p = self._proof(context, lambda: self.app.inclusion_proof(request.position,
                                                                  request.tree_size or None))
        return pb.InclusionProof(leaf_index=p["leaf_index"], tree_size=p["tree_size"],
                                 leaf_hash=bytes.fromhex(p["leaf_hash"]),
                                 path=[bytes.fromhex(h) for h in p["inclusion_path"]],
                                 root_hash=bytes.fromhex(p["root_hash"]))

    @store_errors_are_unavailable
    def GetConsistencyProof(self, request: pb.GetConsistencyProofRequest,
                            context: grpc.ServicerContext) -> pb.ConsistencyProof:
        self.authz.require(context, "GetConsistencyProof", ALL_PROJECTS)
        p = self._proof(context, lambda: self.app.consistency_proof(request.first, request.second))
        return pb.ConsistencyProof(first=p["first"], second=p["second"],
                                   path=[bytes.fromhex(h) for h in p["consistency_path"]],
                                   first_root=bytes.fromhex(p["first_root"]),
                                   second_root=bytes.fromhex(p["second_root"]))
