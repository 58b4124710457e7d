"""Where a run goes, by policy: an experimental run that asks for a restricted backend runs on
the ideal simulator; a canary sends its fraction of a workflow's runs to a candidate backend
or circuit variant.  What was chosen, and why, is recorded in the run's first step."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from qledger.governance.policy import Policy, canary_choice
from qledger.runs.pipeline import SIMULATOR
from qledger.runs.workflow import WorkflowSpec


def route(policy: Policy, spec: WorkflowSpec, run_id: str,
          backends: frozenset[str]) -> tuple[WorkflowSpec, dict[str, Any]]:
    """The run's settings after routing, and what to record of the choice (empty: none made)."""
    if spec.priority == "experimental" and spec.backend in policy.restricted:
        return replace(spec, backend=SIMULATOR, noise_seed=None, fallback_backend=None), {
            "variant": "simulator", "requested_backend": spec.backend,
            "reason": "experimental runs do not use restricted backends"}
    candidate, fraction = canary_choice(policy, spec.name, run_id)
    if fraction == 0.0:
        return spec, {}
    canary = policy.canaries[spec.name]
    routing: dict[str, Any] = {
        "fraction": fraction, "variant": "baseline", "baseline_backend": spec.backend,
        "candidate_backend": canary["candidate_backend"],
        "baseline_optimization_level": spec.optimization_level,
        "candidate_optimization_level": canary.get("candidate_optimization_level")}
    if candidate is None:
        return spec, routing
    changes: dict[str, Any] = {}
    backend = candidate["candidate_backend"]
    if backend is not None and backend in backends:
        # The noise model of a noisy candidate is seeded like the run, and recorded here.
        changes["noise_seed"] = spec.noise_seed if spec.noise_seed is not None else spec.seed_simulator
        changes["backend"] = backend
        routing["noise_seed"] = changes["noise_seed"]
    if candidate.get("candidate_optimization_level") is not None:
        changes["optimization_level"] = int(candidate["candidate_optimization_level"])
    if changes:
        routing["variant"] = "candidate"
        spec = replace(spec, **changes)
    return spec, routing
