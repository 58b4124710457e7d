"""A run's first entry, as a client signs it: reading it, checking every member of it, and
recording it together with its place in the queue.

Nothing here knows a transport: refusals are ``InvalidRequestError`` naming the field, and the
gRPC edge turns them into status codes in one place (``rpc.status``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from eventsourcing.persistence import IntegrityError, StoredEvent

from qledger.ledger import dsse
from qledger.ledger.app import LedgerApp
from qledger.ledger.content import MAX_ENTRY_BYTES, EntryContent
from qledger.ledger.errors import InvalidRequestError, PreconditionError, QledgerError
from qledger.runs.dag import PYTHON
from qledger.runs.queue import RunQueue
from qledger.runs.run import RUN_SUBMITTED_TYPE, TERMINAL, Run, run_id_for
from qledger.runs.schema import SUBMITTED_SCHEMA, unstorable_text, violation
from qledger.runs.templates import Resolver
from qledger.runs.workflow import WorkflowError, parse_workflow, project_of, workflow_sha256

MAX_IDEMPOTENCY_KEY = 128
MAX_CLOCK_SKEW_SECONDS = 300  # for entry times and for signed calls (rpc.authz)


@dataclass(frozen=True)
class SignedSubmission:
    """A Submitted entry read from its envelope, its members not yet checked."""

    data: bytes  # as received: the bytes the ledger stores
    envelope: dsse.SignedEnvelope
    content: EntryContent

    @property
    def payload(self) -> dict[str, Any]:
        return self.content.payload

    @property
    def project(self) -> str:
        """The project whose roles decide who may submit it (read before anything is checked)."""
        workflow = self.payload.get("workflow")
        return project_of(workflow if isinstance(workflow, dict) else {})


@dataclass(frozen=True)
class Submission:
    """A submission every member of which was checked: what the ledger will record."""

    signed: SignedSubmission
    run_id: UUID
    idempotency_key: str
    workflow: dict[str, Any]
    workflow_sha256: str
    template_sha256: str | None = None  # the source digest of the registered template it runs

    @property
    def principal(self) -> str:
        return self.signed.content.principal

    @property
    def project(self) -> str:
        return project_of(self.workflow)


def read_submission(data: bytes) -> SignedSubmission:
    """The envelope and content of a Submitted command; refused unless it is one."""
    if not data:
        raise InvalidRequestError("a signed command is required", "command.envelope")
    try:
        envelope = dsse.parse(data)
        content = EntryContent.from_bytes(envelope.payload)
    except QledgerError as exc:
        raise InvalidRequestError(str(exc), "command.envelope") from exc
    if content.event_type != RUN_SUBMITTED_TYPE or content.stream_version != 1:
        raise InvalidRequestError(f"a submission is a {RUN_SUBMITTED_TYPE} entry at stream version 1",
                                  "command.envelope")
    return SignedSubmission(data, envelope, content)


def check_submission(signed: SignedSubmission, backends: frozenset[str],
                     rerun_of: Run | None = None, templates: Resolver | None = None,
                     now: datetime | None = None, allowed_steps: frozenset[str] = frozenset()) -> Submission:
    """Every member of the command, checked before anything is appended (python steps: only
    the entry points this server allows)."""
    payload = signed.payload
    _check_size(signed)
    found = unstorable_text(payload, "payload") or violation(SUBMITTED_SCHEMA, payload, "payload")
    if found is not None:
        raise InvalidRequestError(found.description, found.field)
    _check_timestamp(signed.content.timestamp, now or datetime.now(UTC))
    key: str = payload["idempotency_key"]  # 1..MAX_IDEMPOTENCY_KEY characters, by the schema
    run_id = run_id_for(signed.content.principal, key)
    if signed.content.stream_id != str(run_id):
        raise InvalidRequestError("stream id must be the run id derived from principal and idempotency key",
                                  "command.envelope")
    try:
        spec = parse_workflow(payload.get("workflow"), backends, templates)
    except WorkflowError as exc:
        raise InvalidRequestError(str(exc), f"workflow.{exc.field}") from exc
    for i, step in enumerate(spec.steps):
        if step.kind == PYTHON and step.entry_point not in allowed_steps:
            raise PreconditionError(f"this server does not run the python step {step.entry_point!r} "
                                    f"(it allows {sorted(allowed_steps) or 'none'})",
                                    f"workflow.steps[{i}].entry_point")
    workflow: dict[str, Any] = payload["workflow"]
    sha = workflow_sha256(workflow)
    if payload.get("workflow_sha256") != sha:
        raise InvalidRequestError("workflow_sha256 does not match the workflow", "workflow_sha256")
    if rerun_of is not None and (payload.get("rerun_of") != str(rerun_of.id)
                                 or sha != rerun_of.workflow_sha256):
        raise InvalidRequestError("a rerun must carry the recorded workflow and name the run it replays",
                                  "command.envelope")
    if rerun_of is None and payload.get("rerun_of") is not None:
        raise InvalidRequestError("use RerunWorkflow to replay a run", "rerun_of")
    template = spec.template_source
    return Submission(signed, run_id, key, workflow, sha, template.sha256 if template else None)


def _check_size(signed: SignedSubmission) -> None:
    """The command is stored as it came: more than an entry holds is refused here, naming what
    made it so large (a sweep's bindings, nearly always), rather than at the append."""
    if len(signed.data) <= MAX_ENTRY_BYTES:
        return
    try:  # the members are not checked yet: anything else counts as no bindings
        bindings = sum(len(pub["parameter_values"]) for pub in signed.payload["workflow"]["execute"]["pubs"]
                       if isinstance(pub["parameter_values"], list))
    except (KeyError, TypeError):
        bindings = 0
    size = f"the command is {len(signed.data):,} bytes; an entry holds at most {MAX_ENTRY_BYTES:,}"
    if bindings:
        raise InvalidRequestError(f"{size}: its {bindings:,} bindings are more than one run can carry; "
                                  "split the sweep into several runs", "workflow.execute.pubs")
    raise InvalidRequestError(size, "command.envelope")


def clock_skew(stamp: str, now: datetime) -> float | None:
    """Seconds ``stamp`` (ISO 8601 with a UTC offset) is ahead of ``now``; None if it is not one."""
    try:
        moment = datetime.fromisoformat(stamp)
    except ValueError:
        return None
    return None if moment.tzinfo is None else (moment - now).total_seconds()


def _check_timestamp(stamp: str, now: datetime) -> None:
    """The client sets its entry's time, and signs it; it must be the time of submission, give
    or take the clock skew calls are allowed (a stale time would skew queue times and reports)."""
    field = "command.envelope.timestamp"
    skew = clock_skew(stamp, now)
    if skew is None:
        raise InvalidRequestError(f"{stamp!r} is not an ISO 8601 time with a UTC offset (e.g. +00:00)",
                                  field)
    if abs(skew) > MAX_CLOCK_SKEW_SECONDS:
        raise InvalidRequestError(
            f"the entry time is {abs(skew):.0f} s {'ahead of' if skew > 0 else 'behind'} the server's "
            f"clock; at most {MAX_CLOCK_SKEW_SECONDS} s is accepted (check the client's clock)", field)


def record_submission(app: LedgerApp, queue: RunQueue, submission: Submission,
                      trace_parent: str | None) -> bool:
    """Append the client-signed entry as it was signed and queue the run, in one transaction.
    False when a concurrent submission with the same key recorded it first (nothing is
    appended then)."""
    signed = submission.signed
    queue.enqueue_with_next_append(submission.run_id, trace_parent)
    try:
        app.recorder.insert_events([StoredEvent(submission.run_id, 1, signed.content.event_type,
                                                signed.data)])
    except IntegrityError:
        if app.find(submission.run_id) is None:
            raise  # not the key of a run recorded first: some other constraint refused the append
        return False
    finally:
        app.ledger.discard_staged()  # left staged only if the append failed before its transaction
    return True


def requeue_accepted(app: LedgerApp, queue: RunQueue, page: int = 1000) -> list[UUID]:
    """Queue every accepted run that has no queue row and has not ended: runs recorded before
    recording and queueing were one transaction, by a server killed between the two."""
    queued = queue.queued()
    requeued: list[UUID] = []
    start: int | None = None
    while True:
        notifications = app.recorder.select_notifications(start, page, topics=[RUN_SUBMITTED_TYPE],
                                                          inclusive_of_start=start is None)
        for notification in notifications:
            run_id = UUID(str(notification.originator_id))
            if run_id in queued:
                continue
            run = app.find(run_id)
            if run is not None and run.status not in TERMINAL:
                queue.enqueue(run_id)
                requeued.append(run_id)
        if len(notifications) < page:
            return requeued
        start = notifications[-1].id
