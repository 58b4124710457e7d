"""Whether a new run may be accepted: the approval gate for restricted backends, then the
project's budget.  Plain functions of the policy and the usage, so every rule is testable
without a server; the caller records each refusal."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from qledger.governance.policy import Policy, budget_verdict
from qledger.ledger.errors import ExhaustedError, PermissionDeniedError, RequestRefusedError
from qledger.runs.workflow import project_of, reserved_shots


@dataclass(frozen=True)
class Refusal:
    kind: str  # the audit event's kind: approval_required, budget_refused
    error: RequestRefusedError


@dataclass(frozen=True)
class Admission:
    refusal: Refusal | None = None
    warning: str = ""  # a budget threshold this run crosses


def admit(policy: Policy, workflow: dict[str, Any], workflow_sha256: str, submitter: str,
          usage_of: Callable[[str], dict[str, float]]) -> Admission:
    """``usage_of(project)`` gives what the project has used; it is read only if a budget is set."""
    project = project_of(workflow)
    execute = workflow["execute"]
    restricted = sorted({execute["backend"], execute.get("fallback_backend")} & policy.restricted)
    experimental = execute.get("priority") == "experimental"  # runs on a simulator instead
    if restricted and not experimental and policy.approved(workflow_sha256, submitter, project) is None:
        reason = (f"backend {restricted[0]} is restricted: this workflow definition needs an approval "
                  f"by an approver of project {project!r} other than its author and its submitter")
        return Admission(Refusal("approval_required", PermissionDeniedError(reason, "workflow_sha256")))
    quota = policy.quotas.get(project)
    if not quota:
        return Admission()
    verdict = budget_verdict(quota, usage_of(project), reserved_shots(workflow))
    if verdict.refusal:
        return Admission(Refusal("budget_refused", ExhaustedError(verdict.refusal, "workflow.execute.shots")))
    return Admission(warning=verdict.warning)
