"""Whether a new run may be accepted: the approval gate for restricted backends, then the
project's budget.  Plain functions of the policy and the usage, so every rule is testable
without a server; the caller records each refusal."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from eventsourcing.persistence import IntegrityError

from qledger.governance.budget_reservations import BudgetReservations, over_budget
from qledger.governance.policy import Policy, budget_verdict
from qledger.ledger.errors import ExhaustedError, PermissionDeniedError, RequestRefusedError
from qledger.runs.shots import reserved_shots
from qledger.runs.workflow import project_of


@dataclass(frozen=True)
class Refusal:
    kind: str  # the audit event's kind: approval_required, budget_refused
    error: RequestRefusedError


@dataclass(frozen=True)
class Admission:
    refusal: Refusal | None = None
    warning: str = ""  # a budget threshold this run crosses


def admit(policy: Policy, workflow: dict[str, Any], workflow_sha256: str, submitter: str,
          usage_of: Callable[[str], dict[str, float]], template_sha256: str | None = None) -> Admission:
    """``usage_of(project)`` gives what the project has used; it is read only if a budget is set.
    A run of a registered template (``template_sha256``, its source digest) on a restricted
    backend is admitted by an approval of that template version, or of the definition."""
    project = project_of(workflow)
    execute = workflow["execute"]
    restricted = sorted({execute["backend"], execute.get("fallback_backend")} & policy.restricted)
    experimental = execute.get("priority") == "experimental"  # runs on a simulator instead
    approved = policy.approved(workflow_sha256, submitter, project) is not None or (
        template_sha256 is not None
        and policy.approved_template(template_sha256, submitter, project) is not None)
    if restricted and not experimental and not approved:
        reason = (f"backend {restricted[0]} is restricted: this workflow definition (or the template "
                  f"version it runs) needs an approval by an approver of project {project!r} other "
                  "than its author and its submitter")
        return Admission(Refusal("approval_required", PermissionDeniedError(reason, "workflow_sha256")))
    quota = policy.quotas.get(project)
    if not quota:
        return Admission()
    verdict = budget_verdict(quota, usage_of(project), reserved_shots(workflow))
    if verdict.refusal:
        return Admission(Refusal("budget_refused", ExhaustedError(verdict.refusal, "workflow.execute.shots")))
    return Admission(warning=verdict.warning)


def record_within_budget(reservations: BudgetReservations, quota: dict[str, Any] | None,
                         used: dict[str, float], workflow: dict[str, Any],
                         record: Callable[[], bool]) -> bool:
    """``record()`` the run (it appends its entry) with the run's reservation of its project's
    budget in the same transaction: ``admit`` read a usage that may be stale by now, and of
    concurrent submissions only those that still fit are recorded."""
    reservations.reserve_with_next_append(project_of(workflow), reserved_shots(workflow), quota, used)
    try:
        return record()
    except IntegrityError as exc:
        if not over_budget(exc):
            raise
        raise ExhaustedError(f"budget exceeded: submissions accepted meanwhile took what was left of project "
                             f"{project_of(workflow)!r}'s quota (the run was not started)",
                             "workflow.execute.shots") from None
