"""Who is calling, and may they: identity from a client certificate or a signing key, roles
and projects from the ledger's governance entries, every denial recorded: the first of each
kind from a peer in a window as an entry, the rest counted into a summary entry, and a peer or
principal going too fast refused with RESOURCE_EXHAUSTED (``governance.flood_control``).

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
import math
from collections.abc import Callable
from datetime import UTC, datetime
from typing import NoReturn, cast

import grpc
from eventsourcing.persistence import PersistenceError

from qledger.governance.flood_control import FloodLimits, Refusal, RefusalWindows, TokenBuckets
from qledger.governance.policy import ALL_PROJECTS, ROLES, ROOT, AuditEvent, AuditSummary, Governance, Policy
from qledger.ledger.app import LedgerApp
from qledger.ledger.errors import (
    ExhaustedError,
    PermissionDeniedError,
    RequestRefusedError,
    UnauthenticatedError,
)
from qledger.ledger.keys import PublicKey
from qledger.ledger.registry import KeyRecord
from qledger.rpc.call_signing import SeenNonces, call_message, full_method
from qledger.rpc.received import received_body_sha256
from qledger.runs.submission import MAX_CLOCK_SKEW_SECONDS, clock_skew

log = logging.getLogger("qledger.authz")
ANONYMOUS = "no client certificate and no valid call signature"
NOT_YET_KNOWN = ""  # the project of a refusal made before the request's run was looked up

# RPC -> what it does, and which roles may do that (in the run's project where there is one).
ACTIONS = {
    "SubmitWorkflow": "submit", "RerunWorkflow": "submit", "CancelRun": "cancel",
    "GetRun": "watch", "WatchRun": "watch", "ListRuns": "watch", "GetArtifact": "watch",
    # Proofs hold only hashes (as a transparency log's do): every client may check its results.
    "GetCheckpoint": "checkpoint", "GetInclusionProof": "checkpoint", "GetInclusionProofs": "checkpoint",
    "GetConsistencyProof": "checkpoint",
    "GetEntry": "read", "StreamEntries": "read",
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
    def __init__(self, app: LedgerApp, recorder_principal: str, enabled: bool,
                 limits: FloodLimits | None = None) -> None:
        self.app, self.recorder_principal, self.enabled = app, recorder_principal, enabled
        self.policies = PolicyCache(app)
        self.limits = limits = limits or FloodLimits()
        burst = limits.burst_seconds
        self.denials = TokenBuckets(limits.denials_per_second, limits.denials_per_second * burst)  # per peer
        self.calls = TokenBuckets(limits.calls_per_second, limits.calls_per_second * burst)  # per principal
        self.refusals = RefusalWindows(limits.window_seconds)
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
        who = self._identified(context, method, project, principal)
        self.permit(context, who, method, project)
        return who

    def caller(self, context: grpc.ServicerContext, method: str) -> str:
        """Who is calling, worked out before anything the request names is looked up, so that
        an unidentified caller cannot tell a run that exists from one that does not; then
        ``permit`` once the project is known.  "" when authorisation is off."""
        if not self.enabled:
            return ""
        return self._identified(context, method, NOT_YET_KNOWN)

    def refuse_signature(self, context: grpc.ServicerContext, method: str, field: str) -> NoReturn:
        """A command whose signature no registered, unrevoked key makes: refused as an
        unidentified call is (recorded once per window, limited per peer)."""
        error = UnauthenticatedError("command signature does not verify with a registered, unrevoked key",
                                     field)
        if not self.enabled:
            raise error
        self._deny(error, peer_host(context), "anonymous", method, NOT_YET_KNOWN)

    def permit(self, context: grpc.ServicerContext, who: str, method: str, project: str) -> None:
        """Abort (and record the denial) unless ``who`` may call ``method`` in ``project``."""
        if self.enabled and not self.allowed(who, method, project):
            self._deny(PermissionDeniedError(f"{who} has no role that may {ACTIONS[method]} in project "
                                             f"{project!r}"), peer_host(context), who, method, project)

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
        who = self._identified(context, method, ALL_PROJECTS)
        policy = self.policies.current()
        scopes = set().union(*(policy.projects_of(who, role) for role in ALLOWED[ACTIONS[method]]))
        if not scopes:
            self._deny(PermissionDeniedError(f"{who} has no role that may {ACTIONS[method]} in any project"),
                       peer_host(context), who, method, ALL_PROJECTS)
        return None if ALL_PROJECTS in scopes else scopes

    def record(self, kind: str, subject: str, action: str, project: str, reason: str) -> None:
        """An audit entry signed by this executor; a store outage must not hide the refusal."""
        try:
            self.app.save(AuditEvent(principal=self.recorder_principal, kind=kind, subject=subject,
                                     action=action, project=project, reason=reason))
        except PersistenceError as exc:
            # The caller still gets its status; a store outage has its own alarms.
            log.error("could not record %s of %s on %s: %s", kind, subject, action, exc)

    def _identified(self, context: grpc.ServicerContext, method: str, project: str,
                    principal: str | None = None) -> str:
        """Who is calling, within the limits: a principal calling too often is refused, and so
        is an unidentified caller from a peer whose calls were refused too often.  Identified
        callers on that peer go on being served: the limit is on what refusals cost."""
        peer = peer_host(context)
        who = principal or self.identify(context, method)
        if who is None:
            self._deny(UnauthenticatedError(ANONYMOUS), peer, "anonymous", method, project)
        wait = self.calls.take(who)
        if wait:
            self._limit(ExhaustedError(f"{who} is calling faster than {self.limits.calls_per_second:g} "
                                       f"calls a second; try again in {wait:.1f} s",
                                       retry_seconds=math.ceil(wait)), peer, who, method, project)
        return who

    def record_summaries(self, flush_all: bool = False) -> None:
        """Record a summary of each window of refusals that has ended (or of every window, when
        the server stops) with refusals beyond its first."""
        for summary in self.refusals.due(flush_all):
            refusal = summary.refusal
            try:
                self.app.save(AuditSummary(
                    principal=self.recorder_principal, kind=refusal.kind, peer=refusal.peer,
                    subject=refusal.subject, action=refusal.action, count=summary.count,
                    window_start=_iso(summary.window_start), window_end=_iso(summary.window_end),
                    reason=summary.reason))
            except PersistenceError as exc:
                log.error("could not record %d %s refusals from %s: %s", summary.count, refusal.kind,
                          refusal.peer, exc)

    def _deny(self, error: RequestRefusedError, peer: str, who: str, method: str, project: str) -> NoReturn:
        wait = self.denials.take(peer)
        if wait:
            self._limit(ExhaustedError(f"too many refused calls from {peer}; try again in {wait:.1f} s",
                                       retry_seconds=math.ceil(wait)), peer, who, method, project)
        self._refuse("access_denied", error, peer, who, method, project)

    def _limit(self, error: ExhaustedError, peer: str, who: str, method: str, project: str) -> NoReturn:
        self._refuse("rate_limited", error, peer, who, method, project)

    def _refuse(self, kind: str, error: RequestRefusedError, peer: str, who: str, method: str,
                project: str) -> NoReturn:
        """Record the first refusal of its kind in its window in full; the rest are counted."""
        if self.refusals.note(Refusal(kind, peer, who, method), str(error)):
            # Logged as it is recorded: the first of its kind in its window, the rest counted.
            log.warning("%s: %s calling %s from %s: %s", kind, who, method, peer, error,
                        extra={"refusal": kind, "subject": who, "grpc_method": method, "peer": peer})
            self.record(kind, who, method, project, f"{error} [peer {peer}]")
        raise error


def peer_host(context: grpc.ServicerContext) -> str:
    """The caller's address without its port (a new connection must not make a new caller)."""
    peer = str(context.peer() or "unknown")
    kind, _, address = peer.partition(":")
    if kind not in ("ipv4", "ipv6"):
        return peer
    return address.rpartition(":")[0].strip("[]") or address


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat()
