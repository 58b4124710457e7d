"""Routing by policy: experimental runs away from restricted backends; canaries by run id."""

from __future__ import annotations

from qledger.governance.policy import Policy, canary_bucket
from qledger.governance.routing import route
from qledger.runs.pipeline import SIMULATOR
from qledger.runs.reference_workflows import GHZ_NOISY
from qledger.runs.workflow import parse_workflow

BACKENDS = frozenset({"aer_ideal", "aer_noisy"})
SPEC = parse_workflow(GHZ_NOISY, BACKENDS)


def test_without_a_policy_nothing_changes() -> None:
    assert route(Policy(), SPEC, "run-1", BACKENDS) == (SPEC, {})


def test_an_experimental_run_on_a_restricted_backend_runs_on_the_simulator() -> None:
    from dataclasses import replace

    experimental = replace(SPEC, priority="experimental")
    spec, routing = route(Policy(restricted=frozenset({SPEC.backend})), experimental, "run-1", BACKENDS)
    assert spec.backend == SIMULATOR and spec.noise_seed is None
    assert routing["variant"] == "simulator" and routing["requested_backend"] == SPEC.backend


def test_a_canary_sends_exactly_the_runs_below_its_fraction() -> None:
    policy = Policy(canaries={SPEC.name: {"candidate_backend": "aer_ideal", "fraction": 0.5,
                                          "candidate_optimization_level": 3}})
    for run_id in (f"run-{i}" for i in range(40)):
        spec, routing = route(policy, SPEC, run_id, BACKENDS)
        candidate = canary_bucket(run_id) < 0.5
        assert routing["variant"] == ("candidate" if candidate else "baseline")
        assert (spec.backend, spec.optimization_level) == (
            ("aer_ideal", 3) if candidate else (SPEC.backend, SPEC.optimization_level))
