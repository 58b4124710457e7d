"""Admission of a new run: the approval gate, then the budget; plain functions of the policy."""

from __future__ import annotations

import copy

from qledger.governance.admission import admit
from qledger.governance.policy import Policy
from qledger.ledger.errors import ExhaustedError, PermissionDeniedError
from qledger.runs.reference_workflows import BELL
from qledger.runs.workflow import workflow_sha256

SHA = workflow_sha256(BELL)
UNUSED = {"runs": 0.0, "shots": 0.0, "executor_seconds": 0.0}


def never_read(project: str) -> dict[str, float]:
    raise AssertionError("usage is read only when a budget is set")


def test_no_policy_admits() -> None:
    assert admit(Policy(), BELL, SHA, "alice", never_read).refusal is None


def test_a_restricted_backend_needs_an_approval_by_someone_else() -> None:
    policy = Policy(restricted=frozenset({BELL["execute"]["backend"]}))
    refusal = admit(policy, BELL, SHA, "alice", never_read).refusal
    assert refusal is not None and refusal.kind == "approval_required"
    assert isinstance(refusal.error, PermissionDeniedError) and refusal.error.field == "workflow_sha256"
    approved = Policy(restricted=policy.restricted, roles={"carol": [["approver", "default"]]},
                      approvals={SHA: [{"approver": "carol", "author": "bob", "rationale": "ok",
                                        "project": "default"}]})
    assert admit(approved, BELL, SHA, "alice", never_read).refusal is None
    self_approved = Policy(restricted=policy.restricted, roles={"alice": [["approver", "default"]]},
                           approvals={SHA: [{"approver": "alice", "author": "bob", "rationale": "ok",
                                             "project": "default"}]})
    assert admit(self_approved, BELL, SHA, "alice", never_read).refusal is not None


def test_an_experimental_run_passes_the_gate_it_will_not_use() -> None:
    experimental = copy.deepcopy(BELL)
    experimental["execute"]["priority"] = "experimental"
    policy = Policy(restricted=frozenset({BELL["execute"]["backend"]}))
    assert admit(policy, experimental, workflow_sha256(experimental), "alice", never_read).refusal is None


def test_the_budget_refuses_and_warns() -> None:
    shots = BELL["execute"]["shots"]
    tight = Policy(quotas={"default": {"shots": shots - 1, "runs": None, "executor_seconds": None,
                                       "warn_at": 0.8}})
    refusal = admit(tight, BELL, SHA, "alice", lambda project: UNUSED).refusal
    assert refusal is not None and refusal.kind == "budget_refused"
    assert isinstance(refusal.error, ExhaustedError) and refusal.error.field == "workflow.execute.shots"
    near = Policy(quotas={"default": {"shots": shots * 10, "runs": None, "executor_seconds": None,
                                      "warn_at": 0.5}})
    used = dict(UNUSED, shots=float(shots * 4.5))
    admission = admit(near, BELL, SHA, "alice", lambda project: used)
    assert admission.refusal is None and "shots" in admission.warning
