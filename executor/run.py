"""The Run aggregate: one workflow run, every step a signed ledger entry."""

from __future__ import annotations

from typing import Any

from eventsourcing.domain import Aggregate, event


class Run(Aggregate):
    @event("Submitted")
    def __init__(self, *, principal: str, workflow: str, workflow_sha256: str,
                 inputs: dict[str, Any]) -> None:
        self.workflow = workflow
        self.steps: list[str] = []
        self.status = "submitted"

    @event("StepRecorded")
    def record_step(self, *, principal: str, step: str, record: dict[str, Any]) -> None:
        self.steps.append(step)
        self.status = "running"

    @event("Completed")
    def complete(self, *, principal: str, summary: dict[str, Any]) -> None:
        self.status = "completed"
