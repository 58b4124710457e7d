"""Cancelling a run: the signed command that asks for it, who may ask, and the Cancelled entry
that records it (the command's digest inside)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import cast

from eventsourcing.persistence import IntegrityError

from qledger.ledger import dsse
from qledger.ledger.app import LedgerApp
from qledger.ledger.canonical import parse_canonical
from qledger.ledger.errors import InvalidRequestError, QledgerError
from qledger.runs.commands import COMMAND_PAYLOAD_TYPE
from qledger.runs.run import TERMINAL, Run

MAX_COMMAND_AGE = timedelta(minutes=10)


@dataclass(frozen=True)
class CancelCommand:
    data: bytes  # as received: its digest is recorded in the Cancelled entry
    envelope: dsse.SignedEnvelope
    run_id: str
    principal: str  # who the body says is asking; must be the signer
    reason: str


def read_cancel(data: bytes, origin: str | None, now: datetime | None = None) -> CancelCommand:
    """A CancelRun command for this ledger, issued within ``MAX_COMMAND_AGE`` of ``now``."""
    try:
        envelope = dsse.parse(data)
        body = parse_canonical(envelope.payload)
    except QledgerError as exc:
        raise InvalidRequestError(str(exc), "command.envelope") from exc
    if (envelope.payload_type != COMMAND_PAYLOAD_TYPE or not isinstance(body, dict)
            or body.get("command") != "CancelRun" or body.get("origin") != origin):
        raise InvalidRequestError("not a CancelRun command for this ledger", "command.envelope")
    try:
        issued = datetime.fromisoformat(str(body.get("issued_at")))
    except ValueError:
        raise InvalidRequestError("issued_at must be ISO 8601", "issued_at") from None
    if issued.tzinfo is None:
        raise InvalidRequestError("issued_at must state its time zone", "issued_at")
    if abs((now or datetime.now(UTC)) - issued) > MAX_COMMAND_AGE:
        raise InvalidRequestError("command is too old (or from the future)", "issued_at")
    return CancelCommand(data, envelope, str(body.get("run_id")),
                         str(body.get("principal")), str(body.get("reason", "")))


def may_cancel(signer: str, command: CancelCommand, submitted_by: str, admin_of_project: bool) -> bool:
    """The signer speaks for itself, and is the run's submitter, root, or an admin of its project."""
    return command.principal == signer and (signer in (submitted_by, "root") or admin_of_project)


def cancel(app: LedgerApp, run: Run, executor: str, requested_by: str, command: CancelCommand,
           settle: Callable[[Run], None] | None = None) -> Run:
    """Record the Cancelled entry unless the run has ended; if a step was recorded meanwhile,
    cancel at the new version, once.  ``settle`` stages what changes with the run's last entry."""
    cancelled = {"principal": executor, "requested_by": requested_by,
                 "command_sha256": hashlib.sha256(command.data).hexdigest(), "reason": command.reason}
    for retry in (False, True):
        if run.status in TERMINAL:
            break
        run.cancel(**cancelled)
        if settle is not None:
            settle(run)
        try:
            app.save(run)
        except IntegrityError:
            if retry:
                raise
            run = cast(Run, app.repository.get(run.id))
            continue
        break
    return run
