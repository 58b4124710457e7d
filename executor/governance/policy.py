"""Governance as ledger entries: roles, quotas, restricted backends, approvals, canaries.

One ``Governance`` aggregate per ledger holds the policy; every change is an entry signed by
the admin (or, for an approval, the approver) who made it, so the policy in force at any
position can be replayed and audited like everything else.  Denials and budget warnings are
entries too (``AuditEvent``), signed by the executor that observed them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid4, uuid5

from eventsourcing.domain import Aggregate, event

from qledger.ledger.errors import QledgerError
from qledger.ledger.topics import wire_topics

ROLES = ("submitter", "approver", "auditor", "admin")
ALL_PROJECTS = "*"
ROOT = "root"  # the genesis admin: admin everywhere, whatever the role table says
AUDIT_KINDS = ("access_denied", "approval_required", "budget_refused", "budget_warning", "rate_limited")


class GovernanceError(QledgerError):
    """A policy change was refused (unknown role, self-approval, promotion not earned...)."""


@wire_topics("executor.governance")
class Governance(Aggregate):
    @staticmethod
    def create_id(origin: str) -> UUID:
        return uuid5(NAMESPACE_URL, f"qledger:{origin}:governance")

    @event("Created")
    def __init__(self, *, principal: str, origin: str) -> None:
        self.origin = origin
        self.roles: dict[str, list[list[str]]] = {}  # subject -> [[role, project], ...]
        self.quotas: dict[str, dict[str, Any]] = {}
        self.restricted: list[str] = []
        self.approvals: dict[str, list[dict[str, Any]]] = {}  # workflow sha256 -> approvals
        self.canaries: dict[str, dict[str, Any]] = {}  # workflow name -> candidate and fraction
        # a registered circuit template's source sha256 -> approvals of that version
        self.template_approvals: dict[str, list[dict[str, Any]]] = {}

    @event("RoleGranted")
    def grant_role(self, *, principal: str, subject: str, role: str, project: str) -> None:
        held = self.roles.setdefault(subject, [])
        if [role, project] not in held:
            held.append([role, project])

    @event("RoleRevoked")
    def revoke_role(self, *, principal: str, subject: str, role: str, project: str) -> None:
        self.roles[subject] = [g for g in self.roles.get(subject, []) if g != [role, project]]

    @event("QuotaSet")
    def set_quota(self, *, principal: str, project: str, shots: int | None, runs: int | None,
                  executor_seconds: float | None, warn_at: float) -> None:
        self.quotas[project] = {"shots": shots, "runs": runs, "executor_seconds": executor_seconds,
                                "warn_at": warn_at}

    @event("BackendRestricted")
    def restrict_backend(self, *, principal: str, backend: str, restricted: bool) -> None:
        others = [b for b in self.restricted if b != backend]
        self.restricted = others + ([backend] if restricted else [])

    @event("TemplateApproved")
    def approve(self, *, principal: str, workflow_sha256: str, name: str, version: int, project: str,
                author: str, rationale: str) -> None:
        self.approvals.setdefault(workflow_sha256, []).append(
            {"approver": principal, "author": author, "rationale": rationale, "project": project})

    @event("CircuitTemplateApproved")
    def approve_template(self, *, principal: str, template: str, source_sha256: str, project: str,
                         author: str, rationale: str) -> None:
        self.template_approvals.setdefault(source_sha256, []).append(
            {"approver": principal, "author": author, "rationale": rationale, "project": project,
             "template": template})

    @event("CanarySet")
    def set_canary(self, *, principal: str, workflow: str, candidate_backend: str | None,
                   fraction: float, candidate_optimization_level: int | None = None) -> None:
        """The candidate is another backend, a circuit variant (another transpiler optimisation
        level), or both; with neither, the canary stops."""
        if candidate_backend is None and candidate_optimization_level is None:
            self.canaries.pop(workflow, None)
        else:
            self.canaries[workflow] = {"candidate_backend": candidate_backend, "fraction": fraction,
                                       "candidate_optimization_level": candidate_optimization_level}


@wire_topics("executor.governance")
class AuditEvent(Aggregate):
    """One observation the executor signs: an access denied, a budget refusal or warning."""

    @event("Observed")
    def __init__(self, *, principal: str, kind: str, subject: str, action: str, project: str,
                 reason: str) -> None:
        self.kind, self.subject, self.action = kind, subject, action

    @staticmethod
    def create_id() -> UUID:
        return uuid4()


@wire_topics("executor.governance")
class AuditSummary(Aggregate):
    """Refusals of one kind, to one subject, of one action, from one peer, counted over a
    window: a flood costs one such entry per window instead of one entry per call.  The first
    refusal of each window has an ``AuditEvent`` of its own; ``count`` are those after it."""

    @event("Summarised")
    def __init__(self, *, principal: str, kind: str, peer: str, subject: str, action: str, count: int,
                 window_start: str, window_end: str, reason: str) -> None:
        self.kind, self.peer, self.count = kind, peer, count

    @staticmethod
    def create_id() -> UUID:
        return uuid4()


# -- the policy, read ---------------------------------------------------------------------

@dataclass(frozen=True)
class Policy:
    """What a Governance aggregate says, in a form the executor can ask questions of."""

    roles: dict[str, list[list[str]]] = field(default_factory=dict)
    quotas: dict[str, dict[str, Any]] = field(default_factory=dict)
    restricted: frozenset[str] = frozenset()
    approvals: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    canaries: dict[str, dict[str, Any]] = field(default_factory=dict)
    template_approvals: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    @classmethod
    def of(cls, governance: Governance | None) -> Policy:
        if governance is None:
            return cls()
        return cls(governance.roles, governance.quotas, frozenset(governance.restricted),
                   governance.approvals, governance.canaries, governance.template_approvals)

    def roles_of(self, subject: str, project: str) -> set[str]:
        if subject == ROOT:
            return set(ROLES)
        return {role for role, scope in self.roles.get(subject, []) if scope in (project, ALL_PROJECTS)}

    def projects_of(self, subject: str, role: str) -> set[str]:
        if subject == ROOT:
            return {ALL_PROJECTS}
        return {scope for held, scope in self.roles.get(subject, []) if held == role}

    def approved(self, workflow_sha256: str, submitter: str, project: str) -> dict[str, Any] | None:
        """An approval of this exact definition by an approver who is neither its author nor
        the submitter, holding the approver role in the project; None if there is none."""
        return self._valid_approval(self.approvals.get(workflow_sha256, []), submitter, project)

    def approved_template(self, source_sha256: str, submitter: str, project: str) -> dict[str, Any] | None:
        """The same, for a registered template's version named by its source digest."""
        return self._valid_approval(self.template_approvals.get(source_sha256, []), submitter, project)

    def _valid_approval(self, approvals: list[dict[str, Any]], submitter: str, project: str
                        ) -> dict[str, Any] | None:
        for approval in approvals:
            approver = approval["approver"]
            if approver not in (approval["author"], submitter) and "approver" in self.roles_of(
                    approver, project):
                return approval
        return None


def canary_bucket(run_id: str) -> float:
    """Where a run falls in [0, 1): the same run id always falls in the same place."""
    return int.from_bytes(hashlib.sha256(f"qledger:canary:{run_id}".encode()).digest()[:8], "big") / 2**64


def canary_choice(policy: Policy, workflow: str, run_id: str) -> tuple[dict[str, Any] | None, float]:
    """(the candidate's settings if this run goes to the candidate, else None; the fraction)."""
    canary = policy.canaries.get(workflow)
    if canary is None:
        return None, 0.0
    fraction = float(canary["fraction"])
    return (canary if canary_bucket(run_id) < fraction else None), fraction


@dataclass(frozen=True)
class BudgetVerdict:
    refusal: str = ""  # why the run may not start, if it may not
    warning: str = ""  # a threshold this run crosses, if any


def budget_verdict(quota: dict[str, Any], used: dict[str, float], shots: int) -> BudgetVerdict:
    """Whether a run reserving ``shots`` fits the project's budget, given what is used."""
    wanted = {"runs": 1.0, "shots": float(shots), "executor_seconds": 0.0}
    warnings = []
    for dimension, extra in wanted.items():
        limit = quota.get(dimension)
        if limit is None:
            continue
        before, after = float(used[dimension]), float(used[dimension]) + extra
        if after > limit or (dimension == "executor_seconds" and before >= limit):
            return BudgetVerdict(refusal=f"budget exceeded: {dimension} {after:g} of {limit:g} "
                                         "(the run was not started)")
        threshold = float(quota["warn_at"]) * limit
        if before < threshold <= after:
            warnings.append(f"{dimension} at {after:g} of {limit:g} ({after / limit:.0%}) with this run")
    return BudgetVerdict(warning="; ".join(warnings))
