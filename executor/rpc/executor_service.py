"""The Executor gRPC service: commands in, runs out.  Thin: each method reads its request,
asks who is calling, calls the rules (``runs.submission``, ``runs.cancellation``,
``governance.admission``) and answers; errors become status codes in ``rpc.status``."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterator
from typing import NoReturn, cast
from uuid import UUID

import grpc

from qledger.api import qledger_pb2 as pb
from qledger.api import qledger_pb2_grpc as pb_grpc
from qledger.governance.admission import admit, record_within_budget
from qledger.governance.budget_reservations import BudgetReservations
from qledger.ledger.app import LedgerApp
from qledger.ledger.artifacts import ArchiveDirectory, ArchiveError
from qledger.ledger.errors import (
    AlreadyExistsError,
    DamagedArtifactError,
    ExhaustedError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    RequestRefusedError,
    StoreUnavailableError,
    UnreadableEntryError,
)
from qledger.ledger.projection import ProjectionRunner
from qledger.ledger.store.artifacts import HotArtifacts
from qledger.ops.tracing import trace_parent
from qledger.provenance.lineage_index import find_runs, run_filter
from qledger.provenance.run_entries import run_artifact
from qledger.provenance.usage import project_usage
from qledger.rpc.authz import Authorizer
from qledger.rpc.entries import entry_message, run_message
from qledger.rpc.status import rpc_method
from qledger.runs.cancellation import cancel, may_cancel, read_cancel
from qledger.runs.queue import RunQueue
from qledger.runs.run import TERMINAL, TERMINAL_TYPES, Run
from qledger.runs.submission import Submission, check_submission, read_submission, record_submission
from qledger.runs.templates import resolver
from qledger.runs.worker import Changes
from qledger.runs.workflow import project_of

log = logging.getLogger("qledger.executor")
WATCH_POLL_SECONDS = 0.05
WATCH_LIMIT_SECONDS = 600.0


class ExecutorService(pb_grpc.ExecutorServicer):
    def __init__(self, app: LedgerApp, queue: RunQueue, max_pending: int, authz: Authorizer,
                 projections: ProjectionRunner, backends: frozenset[str], changes: Changes,
                 wake: Callable[[], None], executor_principal: str,
                 allowed_steps: frozenset[str] = frozenset(),
                 archive: ArchiveDirectory | None = None) -> None:
        self.app, self.queue, self.max_pending = app, queue, max_pending
        self.authz, self.projections = authz, projections
        self.backends, self.changes, self.wake = backends, changes, wake
        self.executor_principal = executor_principal
        self.allowed_steps = allowed_steps
        self.archive = archive  # where `qledger archive` moved artifacts out of the hot table
        self.source = app.source()
        self.reservations = BudgetReservations(app)
        self.templates = resolver(app)
        self._reported_unreadable: set[UUID] = set()

    def _run(self, run_id: UUID) -> Run | None:
        return cast(Run | None, self.app.find(run_id))

    def _run_named(self, run_id: str) -> Run:
        try:
            uuid = UUID(run_id)
        except ValueError:
            raise InvalidRequestError(f"{run_id!r} is not a run id", "run_id") from None
        run = self._run(uuid)
        if run is None:
            raise NotFoundError(f"no run {run_id}", "run_id")
        return run

    @rpc_method
    def SubmitWorkflow(self, request: pb.SubmitWorkflowRequest,
                       context: grpc.ServicerContext) -> pb.SubmitWorkflowResponse:
        return self._submit(request.command.envelope, context, None)

    @rpc_method
    def RerunWorkflow(self, request: pb.RerunWorkflowRequest,
                      context: grpc.ServicerContext) -> pb.SubmitWorkflowResponse:
        return self._submit(request.command.envelope, context, request.run_id)

    def _submit(self, data: bytes, context: grpc.ServicerContext,
                rerun_id: str | None) -> pb.SubmitWorkflowResponse:
        rpc = "RerunWorkflow" if rerun_id is not None else "SubmitWorkflow"
        signed = read_submission(data)
        # The store checks the signature again as it appends: that check guards the ledger,
        # this one decides who is asking (so it is skipped when nobody's identity matters).
        envelope = signed.envelope
        signer = (self.authz.signer(envelope.key_id, envelope.signature_valid, signed.content.principal)
                  if self.authz.enabled else None)
        self.authz.require(context, rpc, signed.project, principal=signer.principal if signer else None)
        rerun_of = self._run_named(rerun_id) if rerun_id is not None else None  # looked up for the caller
        submission = check_submission(signed, self.backends, rerun_of, self.templates,
                                      allowed_steps=self.allowed_steps)
        existing = self._run(submission.run_id)
        if existing is None:
            policy = self.authz.policies.current()
            quota = policy.quotas.get(submission.project)
            used = self._usage(submission.project) if quota else {}
            admission = admit(policy, submission.workflow, submission.workflow_sha256,
                              submission.principal, lambda _: used, submission.template_sha256)
            if admission.refusal is not None:
                self._refused(admission.refusal.kind, submission, admission.refusal.error)
            pending = self.queue.pending()
            if pending >= self.max_pending:
                raise ExhaustedError(f"{pending} runs are waiting; try again shortly", retry_seconds=2)
            try:
                recorded = record_within_budget(
                    self.reservations, quota, used, submission.workflow,
                    lambda: record_submission(self.app, self.queue, submission, trace_parent()))
            except ExhaustedError as exc:
                self._refused("budget_refused", submission, exc)
            if recorded:
                if admission.warning:
                    self.authz.record("budget_warning", submission.principal, "SubmitWorkflow",
                                      submission.project, admission.warning)
                self.wake()
                created = self._run(submission.run_id)
                assert created is not None
                return pb.SubmitWorkflowResponse(run=run_message(created), created=True)
            existing = self._run(submission.run_id)  # a concurrent submission with the same key won
        assert existing is not None
        if existing.workflow_sha256 != submission.workflow_sha256:
            raise AlreadyExistsError(f"idempotency key {submission.idempotency_key!r} already names run "
                                     f"{submission.run_id} with another workflow", "idempotency_key")
        if existing.status not in TERMINAL:
            # A no-op when it is queued; queues a run that a crash left recorded but unqueued.
            self.queue.enqueue(existing.id)
            self.wake()
        return pb.SubmitWorkflowResponse(run=run_message(existing), created=False)

    def _refused(self, kind: str, submission: Submission, error: RequestRefusedError) -> NoReturn:
        self.authz.record(kind, submission.principal, "SubmitWorkflow", submission.project, str(error))
        raise error

    def _usage(self, project: str) -> dict[str, float]:
        self.projections.catch_up(["usage"])
        return cast(dict[str, float], self.projections.read("usage", lambda db: project_usage(db, project)))

    @rpc_method
    def CancelRun(self, request: pb.CancelRunRequest, context: grpc.ServicerContext) -> pb.Run:
        command = read_cancel(request.command.envelope, self.app.origin)
        key = self.authz.signer(command.envelope.key_id, command.envelope.signature_valid)
        if key is None:
            self.authz.refuse_signature(context, "CancelRun", "command.envelope")
        run = self._run_named(command.run_id)
        project = project_of(run.workflow)
        self.authz.require(context, "CancelRun", project, principal=key.principal)
        roles = self.authz.policies.current().roles_of(key.principal, project)
        if not may_cancel(key.principal, command, run.submitted_by, self.authz.enabled and "admin" in roles):
            raise PermissionDeniedError(f"{key.principal} may not cancel a run submitted by "
                                        f"{run.submitted_by}", "run_id")
        ended = run.status in TERMINAL
        run = cancel(self.app, run, self.executor_principal, key.principal, command,
                     self.reservations.settle_with_next_append)
        if not ended:
            self.changes.notify()
        return run_message(run)

    @rpc_method
    def GetRun(self, request: pb.GetRunRequest, context: grpc.ServicerContext) -> pb.Run:
        who = self.authz.caller(context, "GetRun")
        run = self._run_named(request.run_id)
        self.authz.permit(context, who, "GetRun", project_of(run.workflow))
        return run_message(run)

    @rpc_method
    def ListRuns(self, request: pb.ListRunsRequest, context: grpc.ServicerContext) -> pb.ListRunsResponse:
        if not 0 <= request.limit <= 1000:
            raise InvalidRequestError("limit must be 0..1000", "limit")
        visible = self.authz.visible_projects(context, "ListRuns")
        wanted = run_filter(request.workflow, request.backend, request.dataset_sha256, request.submitted_by,
                            request.since, request.until, request.limit or 50)
        if wanted.narrows:
            self.projections.catch_up(["lineage"])
            found = self.projections.read("lineage", lambda db: find_runs(db, wanted))
            run_ids = [UUID(str(row["run_id"])) for row in found]
        else:
            run_ids = self.queue.recent(wanted.limit)
        runs = [self._readable_run(run_id) for run_id in run_ids]
        return pb.ListRunsResponse(runs=[run_message(r) for r in runs if r is not None and (
            visible is None or project_of(r.workflow) in visible)])

    def _readable_run(self, run_id: UUID) -> Run | None:
        """The run, or None (said once in the log) if this version cannot interpret its entries:
        one such entry must not stop a listing for everyone."""
        try:
            return self._run(run_id)
        except UnreadableEntryError as exc:
            if run_id not in self._reported_unreadable:
                self._reported_unreadable.add(run_id)
                log.error("ListRuns skips run %s: %s", run_id, exc)
            return None

    @rpc_method
    def GetArtifact(self, request: pb.GetArtifactRequest, context: grpc.ServicerContext) -> pb.Artifact:
        """The bytes of an artifact one of the run's entries references (readable by whoever may
        watch the run)."""
        who = self.authz.caller(context, "GetArtifact")
        run = self._run_named(request.run_id)
        self.authz.permit(context, who, "GetArtifact", project_of(run.workflow))
        reference = run_artifact(self.source.stream_entries(run.id, 0), request.sha256)
        data, where = HotArtifacts(self.app.ledger).get(request.sha256), "the store's hot table"
        if data is None and self.archive is not None:
            try:
                data, where = self.archive.get(request.sha256), f"the archive {self.archive.root}"
            except ArchiveError as exc:  # the directory unreadable here: the server's to mend
                raise StoreUnavailableError(str(exc)) from None
        if data is None:
            looked = ("in neither the store's hot table nor the archive" if self.archive is not None
                      else "not in the store's hot table (archived? serve with --archive)")
            raise NotFoundError(f"artifact {request.sha256} is {looked}", "sha256")
        if hashlib.sha256(data).hexdigest() != request.sha256:
            raise DamagedArtifactError(f"the copy of artifact {request.sha256} in {where} does not hash "
                                       "to its digest")
        return pb.Artifact(sha256=request.sha256, media_type=str(reference["media_type"]), data=data)

    @rpc_method
    def WatchRun(self, request: pb.WatchRunRequest,
                 context: grpc.ServicerContext) -> Iterator[pb.LedgerEntry]:
        who = self.authz.caller(context, "WatchRun")
        run = self._run_named(request.run_id)
        self.authz.permit(context, who, "WatchRun", project_of(run.workflow))
        after = request.after_version
        # Whether the run has ended is read off the entries streamed (rereading the run at
        # every wake-up decoded its whole history, the sweep's bindings too, once per entry).
        ended = run.status in TERMINAL
        deadline = time.monotonic() + WATCH_LIMIT_SECONDS
        while context.is_active() and time.monotonic() < deadline:
            seen = self.changes.seen()
            rows = self.source.stream_entries(run.id, after)
            for row in rows:
                after = row.originator_version or after
                ended = ended or row.topic in TERMINAL_TYPES
                if row.position > request.after_position:
                    yield entry_message(row)
            if not rows:
                if ended:
                    return
                # Woken at once by this process's workers; the timeout covers other executors.
                self.changes.wait(seen, WATCH_POLL_SECONDS)
