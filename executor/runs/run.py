"""The Run aggregate: one workflow run, every step a signed ledger entry."""

from __future__ import annotations

from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate, event
from eventsourcing.utils import get_topic

from qledger.ledger.topics import wire_topics

TERMINAL = frozenset({"completed", "failed", "cancelled"})


def run_id_for(principal: str, idempotency_key: str) -> UUID:
    """The run a client's idempotency key names: the same key always means the same run."""
    return uuid5(NAMESPACE_URL, f"qledger:run:{principal}:{idempotency_key}")


@wire_topics("executor.run")
class Run(Aggregate):
    @staticmethod
    def create_id(principal: str, idempotency_key: str) -> UUID:
        return run_id_for(principal, idempotency_key)

    @event("Submitted")
    def __init__(self, *, principal: str, idempotency_key: str, nonce: str, workflow: dict[str, Any],
                 workflow_sha256: str, rerun_of: str | None) -> None:
        self.submitted_by = principal
        self.workflow = workflow
        self.workflow_sha256 = workflow_sha256
        self.rerun_of = rerun_of
        self.steps: list[str] = []
        self.records: list[dict[str, Any]] = []
        self.status = "submitted"
        self.error = ""

    @event("StepRecorded")
    def record_step(self, *, principal: str, step: str, record: dict[str, Any]) -> None:
        self.steps.append(step)
        self.records.append(record)
        self.status = "running"

    @event("Cancelled")
    def cancel(self, *, principal: str, requested_by: str, command_sha256: str, reason: str) -> None:
        self.status = "cancelled"
        self.error = f"cancelled by {requested_by}: {reason}"

    @event("Completed")
    def complete(self, *, principal: str, summary: dict[str, Any]) -> None:
        self.status = "completed"

    @event("Failed")
    def fail(self, *, principal: str, error_class: str, message: str, step: str, kind: str,
             diagnostics: dict[str, Any]) -> None:
        self.status = "failed"
        self.error = f"{kind} {error_class} in {step}: {message}"


RUN_TOPIC = get_topic(Run)
RUN_SUBMITTED_TYPE = get_topic(Run.Submitted)  # type: ignore[attr-defined]
# The event types that end a run (its status one of TERMINAL): nothing follows them.
TERMINAL_TYPES = frozenset(get_topic(e) for e in (Run.Completed, Run.Failed, Run.Cancelled))  # type: ignore[attr-defined]


RESULT_MEMBERS = ("counts", "shots", "energy", "energy_std", "parameters", "evaluations")
PUB_RESULT_MEMBERS = ("pub", "bindings", "shots", "evs", "stds", "precision", "result_sha256")


def results_of(records: list[dict[str, Any]]) -> dict[str, Any]:
    """What a run's step records say it produced: the execution step's counts (or a variational
    loop's energy), and each PUB result (expectation values inline, a Sampler chunk's counts by
    the digest of their artifact)."""
    results: dict[str, Any] = {}
    for record in records:
        if record.get("kind") == "execution":
            results |= {k: record[k] for k in RESULT_MEMBERS if k in record}
        elif record.get("kind") == "pub_result":
            results.setdefault("pubs", []).append({k: record[k] for k in PUB_RESULT_MEMBERS if k in record})
    return results
