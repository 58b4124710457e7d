"""Variational loops: the optimisers under their evaluation limit, QAOA as one instance, VQE for
H2 against exact diagonalisation through the real server, and refusals of bad settings."""

from __future__ import annotations

import copy
import json
from typing import Any

import grpc
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from qiskit.primitives import StatevectorEstimator
from qiskit.quantum_info import SparsePauliOp

from qledger.ledger.errors import DefinitionError
from qledger.provenance.report import report, run_facts
from qledger.runs.backends import BackendCatalog
from qledger.runs.breaker import BreakerBoard
from qledger.runs.circuit_source import load_circuit
from qledger.runs.pipeline import ExecutionContext, run_steps
from qledger.runs.reference_workflows import load
from qledger.runs.variational import OPTIMIZERS, exact_ground_energy, minimise, parse_optimizer
from qledger.runs.workflow import WorkflowError, parse_workflow
from tests.executor.conftest import Service
from tests.executor.rpc.test_grpc import code_of
from tests.executor.runs.test_user_workloads import finished

SPSA = {"method": "SPSA", "seed": 3, "learning_rate": 1.0, "perturbation": 0.2}


def bowl(x: list[float]) -> float:
    return float((x[0] - 1.0) ** 2 + 2 * (x[1] + 0.5) ** 2)


@pytest.mark.parametrize("method", OPTIMIZERS)
def test_each_optimiser_records_every_evaluation_within_its_limit(method: str) -> None:
    settings_ = {"method": method, "maxiter": 40, "initial_parameters": [0.0, 0.0],
                 **(SPSA | {"method": method} if method == "SPSA" else {})}
    calls: list[list[float]] = []

    def objective(x: list[float]) -> float:
        calls.append(x)
        return bowl(x)

    result = minimise(objective, parse_optimizer(settings_, 2, "x, y"))
    assert 0 < len(result.iterations) <= 40 and len(calls) == len(result.iterations)
    assert [i["parameters"] for i in result.iterations] == calls
    assert [i["value"] for i in result.iterations] == [round(bowl(x), 12) for x in calls]
    assert result.best_value == min(i["value"] for i in result.iterations) < bowl([0.0, 0.0])
    if method != "SPSA":  # SPSA never evaluates its starting point itself
        assert calls[0] == [0.0, 0.0]
    # The same settings give the same trajectory.
    again = minimise(bowl, parse_optimizer(settings_, 2, "x, y"))
    assert again.iterations == result.iterations


def test_spsa_follows_its_seed() -> None:
    def run(seed: int) -> list[dict[str, Any]]:
        settings_ = {**SPSA, "seed": seed, "maxiter": 20, "initial_parameters": [0.0, 0.0]}
        return minimise(bowl, parse_optimizer(settings_, 2, "x, y")).iterations

    assert run(3) == run(3) and run(3) != run(4)


def test_the_limit_stops_a_loop_that_would_go_on() -> None:
    result = minimise(bowl, parse_optimizer({"method": "Nelder-Mead", "maxiter": 7,
                                             "initial_parameters": [5.0, 5.0]}, 2, "x, y"))
    assert len(result.iterations) == 7 and result.stopped == "evaluation limit"


@pytest.mark.parametrize(("settings_", "field"), [
    ({"method": "BFGS"}, "optimizer.method"),
    ({"maxiter": 0}, "optimizer.maxiter"),
    ({"initial_parameters": [0.1]}, "optimizer.initial_parameters"),
    ({"initial_parameters": [0.1, float("nan")]}, "optimizer.initial_parameters"),
    ({"method": "SPSA", "learning_rate": 1.0, "perturbation": 0.1}, "optimizer.seed"),
    ({"method": "SPSA", "seed": 1, "perturbation": 0.1}, "optimizer.learning_rate"),
    ({"learning_rate": 1.0}, "optimizer.learning_rate"),
    ({"tolerance": 1e-3}, "optimizer.tolerance"),
])
def test_bad_optimiser_settings_name_their_field(settings_: dict[str, Any], field: str) -> None:
    with pytest.raises(DefinitionError) as caught:
        parse_optimizer({"method": "COBYLA", "maxiter": 10, "initial_parameters": [0.1, 0.2]} | settings_,
                        2, "x, y")
    assert caught.value.field == field


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["II", "IZ", "ZI", "XX", "YY", "ZZ", "XZ"]),
                          st.floats(-2, 2, allow_nan=False)), min_size=1, max_size=6))
def test_exact_ground_energy_is_the_lowest_eigenvalue(terms: list[tuple[str, float]]) -> None:
    matrix = SparsePauliOp.from_list(terms).to_matrix()
    lowest = exact_ground_energy(tuple(terms))
    # No state has a lower energy, and the eigenvector of that energy attains it.
    values, vectors = np.linalg.eigh(matrix)
    assert lowest == pytest.approx(values[0], abs=1e-9)
    assert np.allclose(matrix @ vectors[:, 0], lowest * vectors[:, 0], atol=1e-9)


def run_directly(workflow: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return dict(run_steps(parse_workflow(workflow), ExecutionContext(BackendCatalog(), BreakerBoard())))


@pytest.mark.parametrize("optimizer", [{"method": "Powell"}, {**SPSA, "learning_rate": 0.5}])
def test_qaoa_is_one_instance_of_the_loop(optimizer: dict[str, Any]) -> None:
    workflow = copy.deepcopy(load("qaoa_maxcut"))
    workflow["optimizer"] |= optimizer
    records = run_directly(workflow)
    loop = records["hybrid_optimisation"]
    assert loop["optimizer"]["method"] == optimizer["method"]
    assert 0 < loop["evaluations"] <= workflow["optimizer"]["maxiter"]
    assert all(i["expected_cut"] == -i["value"] for i in loop["iterations"])
    assert loop["best_value"] == min(i["value"] for i in loop["iterations"])
    assert records["execution"]["parameters"] == loop["best_parameters"]
    assert records["report"]["approximation_ratio"] > 0.6


def test_vqe_for_h2_reaches_the_exact_ground_energy(service: Service) -> None:
    workflow = load("vqe_h2")
    entries, records = finished(service, workflow)
    assert entries[-1].event_type.endswith("Run.Completed")
    terms = [tuple(t) for t in workflow["datasets"]["h2"]["terms"]]
    exact = float(np.linalg.eigvalsh(SparsePauliOp.from_list(terms).to_matrix())[0])
    assert exact == pytest.approx(-1.857275, abs=1e-6)  # the published ground-state energy at 0.735 Å
    loop = records["hybrid_optimisation"]
    assert loop["iterations"][0]["parameters"] == workflow["optimizer"]["initial_parameters"]
    assert len(loop["iterations"]) == loop["evaluations"] <= workflow["optimizer"]["maxiter"]
    # Each recorded value is what Qiskit's reference Estimator gives at the recorded parameters.
    ansatz = load_circuit(workflow["circuit"], "estimator").circuit
    h2 = SparsePauliOp.from_list(terms)
    for iteration in loop["iterations"][:: max(1, len(loop["iterations"]) // 8)]:
        reference = StatevectorEstimator().run([(ansatz, h2, iteration["parameters"])]).result()[0]
        assert iteration["value"] == pytest.approx(float(reference.data.evs), abs=1e-9)
    result = records["report"]
    assert result["classical_baseline"]["ground_energy"] == pytest.approx(exact, abs=1e-12)
    assert result["energy"] == records["execution"]["energy"] == loop["best_value"]
    assert result["energy_error"] == pytest.approx(abs(result["energy"] - exact), abs=1e-12)
    assert result["energy_error"] < 1e-5
    # The reproducibility report carries the energy error, and a rerun reproduces it exactly.
    facts = run_facts([e.envelope for e in entries])
    again, _ = finished(service, workflow)
    compared = report(facts, run_facts([e.envelope for e in again]))
    assert compared["result"]["energy_error"] == result["energy_error"]
    assert compared["comparison"]["verdict"] == "reproduced exactly"


@pytest.mark.parametrize(("change", "field"), [
    (lambda w: w["optimizer"].update(initial_parameters=[0.1, 0.2]), "workflow.optimizer.initial_parameters"),
    (lambda w: w["datasets"]["h2"]["terms"].append(["XXI", 0.5]), "workflow.datasets.h2.terms[5]"),
    (lambda w: w["execute"].update(observable_dataset="h3"), "workflow.execute.observable_dataset"),
    (lambda w: w["execute"].update(precision=-0.1), "workflow.execute.precision"),
    (lambda w: w["optimizer"].update(method="SPSA"), "workflow.optimizer.learning_rate"),
])
def test_bad_variational_definitions_are_refused_and_nothing_is_recorded(
        service: Service, change: Any, field: str) -> None:
    workflow = copy.deepcopy(load("vqe_h2"))
    change(workflow)
    with pytest.raises(WorkflowError):
        parse_workflow(workflow)
    before = service.app.tree_size()
    code, fields = code_of(lambda: service.submit(workflow))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and fields == [field]
    assert service.app.tree_size() == before


def test_vqe_definition_round_trips_and_reserves_no_shots() -> None:
    from qledger.runs.shots import reserved_shots

    workflow = load("vqe_h2")
    assert parse_workflow(json.loads(json.dumps(workflow))).to_json() == workflow
    assert reserved_shots(workflow) == 0
