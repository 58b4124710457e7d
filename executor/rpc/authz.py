"""Who is calling, and may they: identity from a client certificate or a signing key, roles
and projects from the ledger's governance entries, every denial recorded as an entry.

Identity is never a field the caller fills in.  It is, in order: the signer of the command
(SubmitWorkflow, RerunWorkflow, CancelRun carry signed commands); the common name of a
verified client certificate (mutual TLS); or a per-call signature in metadata by a key the
ledger has registered, over the method, the time, a nonce and the request body's digest
(``rpc.call_signing``), used once.
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import NoReturn, cast

import grpc
from eventsourcing.persistence import PersistenceError

from qledger.governance.policy import ALL_PROJECTS, ROLES, ROOT, AuditEvent, Governance, Policy
from qledger.ledger.app import LedgerApp
from qledger.ledger.errors import PermissionDeniedError, RequestRefusedError, UnauthenticatedError
from qledger.ledger.keys import PublicKey
from qledger.ledger.registry import KeyRecord
from qledger.rpc.call_signing import SeenNonces, call_message, full_method
from qledger.rpc.received import received_body_sha256
from qledger.runs.submission import MAX_CLOCK_SKEW_SECONDS, clock_skew

log = logging.getLogger("qledger.authz")
ANONYMOUS = "no client certificate and no valid call signature"

# RPC -> what it does, and which roles may do that (in the run's project where there is one).
ACTIONS = {
    "SubmitWorkflow": "submit", "RerunWorkflow": "submit", "CancelRun": "cancel",
    "GetRun": "watch", "WatchRun": "watch", "ListRuns": "watch",
    "GetCheckpoint": "checkpoint",
    "GetEntry": "read", "StreamEntries": "read", "GetInclusionProof": "read", "GetConsistencyProof": "read",
    "ExportBundle": "audit", "GetLineage": "audit", "GetReport": "audit",
}
ALLOWED = {
    "submit": frozenset({"submitter", "admin"}),
    "cancel": frozenset({"submitter", "admin"}),
    "watch": frozenset({"submitter", "approver", "auditor", "admin"}),
    "checkpoint": frozenset(ROLES),  # every client needs the ledger's origin and root
    "read": frozenset({"auditor", "admin"}),
    "audit": frozenset({"auditor", "admin"}),
}


class PolicyCache:
    """The governance policy, re-read only when its stream has a new version."""

    def __init__(self, app: LedgerApp) -> None:
        self.app = app
        self._version = -1
        self._policy = Policy()

    def current(self) -> Policy:
        origin = self.app.origin
        if origin is None:
            return self._policy
        stream = Governance.create_id(origin)
        latest = self.app.recorder.select_events(stream, desc=True, limit=1)
        version = latest[0].originator_version if latest else 0
        if version != self._version:
            governance = cast(Governance, self.app.repository.get(stream)) if version else None
            self._policy, self._version = Policy.of(governance), version
        return self._policy


class Authorizer:
    def __init__(self, app: LedgerApp, recorder_principal: str, enabled: bool) -> None:
        self.app, self.recorder_principal, self.enabled = app, recorder_principal, enabled
        self.policies = PolicyCache(app)
        # Long enough that a signature's time is out of the window before its nonce is forgotten.
        self.nonces = SeenNonces(2 * MAX_CLOCK_SKEW_SECONDS + 60)

    def identify(self, context: grpc.ServicerContext, method: str) -> str | None:
        """The caller's principal from its certificate or its call signature; None if neither.
        Called once per call: a call signature's nonce is spent here."""
        names = (context.auth_context() or {}).get("x509_common_name")
        if names:
            return bytes(names[0]).decode()
        metadata = dict(context.invocation_metadata() or ())
        principal, key_id = metadata.get("qledger-principal"), metadata.get("qledger-key-id")
        issued, nonce = metadata.get("qledger-time"), metadata.get("qledger-nonce")
        signature, body = metadata.get("qledger-signature"), received_body_sha256()
        if not (principal and key_id and issued and nonce and signature and body):
            return None
        try:
            raw = base64.b64decode(str(signature), validate=True)
        except (ValueError, binascii.Error):
            return None
        skew = clock_skew(str(issued), datetime.now(UTC))
        if skew is None or abs(skew) > MAX_CLOCK_SKEW_SECONDS:
            return None
        message = call_message(full_method(method), str(issued), str(nonce), body)
        key = self.signer(str(key_id), lambda public: public.verify(raw, message), str(principal))
        if key is None:
            return None
        if not self.nonces.first_use(key.key_id, str(nonce)):
            log.warning("refused a replayed call signature (key %s…, %s)", key.key_id[:16], method)
            return None
        return key.principal

    def signer(self, key_id: str, signed_by: Callable[[PublicKey], bool],
               principal: str | None = None) -> KeyRecord | None:
        """The ledger's record of key ``key_id`` if it is registered, not revoked, belongs to
        ``principal`` (when given) and ``signed_by`` holds for it; None otherwise."""
        key = self.app.ledger.key_record(key_id)
        if key is None or key.revoked_at is not None:
            return None
        if principal is not None and key.principal != principal:
            return None
        return key if signed_by(key.public) else None

    def require(self, context: grpc.ServicerContext, method: str, project: str,
                principal: str | None = None) -> str:
        """The caller's principal if it may call ``method`` in ``project``; else abort (and
        record the denial).  ``principal`` is the signer of a command the call carries."""
        if not self.enabled:
            return principal or ""  # no identity needed, so none is worked out
        who = principal or self.identify(context, method)
        if who is None:
            self._deny(UnauthenticatedError(ANONYMOUS), "anonymous", method, project)
        if not self.allowed(who, method, project):
            self._deny(PermissionDeniedError(f"{who} has no role that may {ACTIONS[method]} in project "
                                             f"{project!r}"), who, method, project)
        return who

    def allowed(self, who: str, method: str, project: str) -> bool:
        policy = self.policies.current()
        if ACTIONS[method] == "checkpoint":  # not project data: any role in any project will do
            return who == ROOT or bool(policy.roles.get(who))
        return bool(policy.roles_of(who, project) & ALLOWED[ACTIONS[method]])

    def visible_projects(self, context: grpc.ServicerContext, method: str) -> set[str] | None:
        """Projects whose runs the caller may see through ``method`` (None: all of them);
        a caller who may see none is denied, and the denial recorded."""
        if not self.enabled:
            return None
        who = self.identify(context, method)
        if who is None:
            self._deny(UnauthenticatedError(ANONYMOUS), "anonymous", method, ALL_PROJECTS)
        policy = self.policies.current()
        scopes = set().union(*(policy.projects_of(who, role) for role in ALLOWED[ACTIONS[method]]))
        if not scopes:
            self._deny(PermissionDeniedError(f"{who} has no role that may {ACTIONS[method]} in any project"),
                       who, method, ALL_PROJECTS)
        return None if ALL_PROJECTS in scopes else scopes

    def record(self, kind: str, subject: str, action: str, project: str, reason: str) -> None:
        """An audit entry signed by this executor; a store outage must not hide the refusal."""
        try:
            self.app.save(AuditEvent(principal=self.recorder_principal, kind=kind, subject=subject,
                                     action=action, project=project, reason=reason))
        except PersistenceError as exc:
            # The caller still gets its status; a store outage has its own alarms.
            log.error("could not record %s of %s on %s: %s", kind, subject, action, exc)

    def _deny(self, error: RequestRefusedError, who: str, method: str, project: str) -> NoReturn:
        self.record("access_denied", who, method, project, str(error))
        raise error
