"""A user's own circuits through the real server: OpenQASM 3 with parameters, 40 qubits on
matrix product states, a real device's model with its calibration snapshot recorded."""

from __future__ import annotations

import copy
import json
from typing import Any

import grpc
import pytest
from qiskit import transpile
from qiskit_aer import AerSimulator

from qledger.api import qledger_pb2 as pb
from qledger.ledger import dsse
from qledger.ledger.store.artifacts import HotArtifacts
from qledger.ledger.verify import verify
from qledger.provenance.lineage import lineage_json
from qledger.runs.circuit_source import load_circuit
from qledger.runs.reference_workflows import load
from tests.conftest import ONLY_SQLITE
from tests.executor.conftest import Service, ServiceFactory, step_records
from tests.executor.ops.test_metrics import scrape
from tests.executor.rpc.test_grpc import code_of


def finished(service: Service, workflow: dict[str, Any]) -> tuple[list[pb.LedgerEntry], dict[str, Any]]:
    entries = service.watch(service.submit(workflow).run.run_id)
    return entries, step_records([json.loads(dsse.parse(e.envelope).payload) for e in entries])


def test_a_users_qasm3_circuit_runs_as_aer_runs_it(service: Service) -> None:
    workflow = load("user_qasm3")
    entries, records = finished(service, workflow)
    assert entries[-1].event_type.endswith("Run.Completed")
    loading = records["circuit_synthesis"]
    loaded = load_circuit(workflow["circuit"])
    assert loading["circuit_source"]["sha256"] == loaded.sha256
    assert loading["parameters"] == workflow["circuit"]["parameters"]
    # The source bytes themselves are kept, by digest, with the entry that names them.
    kept = HotArtifacts(service.app.ledger).get(loading["artifacts"]["circuit_source"]["sha256"])
    assert kept == workflow["circuit"]["source"].encode()
    # Same seeds, same transpiler settings: Aer run directly gives the very same counts.
    settings = workflow["transpile"]
    direct = AerSimulator().run(
        transpile(loaded.circuit, AerSimulator(), optimization_level=settings["optimization_level"],
                  seed_transpiler=settings["seed_transpiler"]),
        shots=workflow["execute"]["shots"], seed_simulator=workflow["execute"]["seed_simulator"]).result()
    assert records["execution"]["counts"] == dict(sorted(direct.get_counts().items()))
    assert records["report"]["classical_baseline"] and records["report"]["total_variation_distance"] < 0.05
    # The circuit text is an entity of the run's lineage, by its digest.
    prov = lineage_json(service.app.require_origin(), [(e.position, e.envelope) for e in entries])
    assert f"qledger:circuit_source/{loaded.sha256}" in prov["entity"]
    assert verify(service.app.source()).ok


def test_a_rerun_of_the_same_definition_gives_identical_counts(service: Service) -> None:
    workflow = load("user_qasm3")
    _, first = finished(service, workflow)
    _, second = finished(service, workflow)
    assert first["execution"]["counts"] == second["execution"]["counts"]
    assert first["transpilation"]["qasm3_sha256"] == second["transpilation"]["qasm3_sha256"]


def test_ghz_on_40_qubits_runs_on_matrix_product_states(service: Service) -> None:
    _, records = finished(service, load("ghz40_mps"))
    counts = records["execution"]["counts"]
    assert set(counts) == {"0" * 40, "1" * 40} and sum(counts.values()) == 1024
    assert records["execution"]["backend"]["method"] == "matrix_product_state"


@ONLY_SQLITE  # the calibration does not depend on the store (time budget)
def test_ghz_on_a_device_model_records_its_calibration(service_factory: ServiceFactory) -> None:
    service = service_factory(metrics_port=0)
    entries, records = finished(service, load("ghz_brisbane"))
    assert entries[-1].event_type.endswith("Run.Completed")
    calibration = records["execution"]["calibration"]
    assert calibration["backend"] == "fake_brisbane" and calibration["backend_version"]
    assert calibration["last_update_date"] and calibration["parameters"] > 0
    assert calibration["max_age_seconds"] >= calibration["median_age_seconds"] > 0
    snapshot = HotArtifacts(service.app.ledger).get(calibration["snapshot"]["sha256"])
    assert snapshot is not None and json.loads(snapshot)["backend_name"] == "ibm_brisbane"
    # Transpiled for the device: its basis gates only.
    assert set(records["transpilation"]["gate_counts"]) <= {"ecr", "rz", "sx", "x", "measure", "barrier"}
    prov = lineage_json(service.app.require_origin(), [(e.position, e.envelope) for e in entries])
    assert f"qledger:calibration/{calibration['sha256']}" in prov["entity"]
    port = service.running.metrics_port
    assert port
    age = scrape(port)[("qledger_calibration_age_seconds", (("backend", "fake:brisbane"),))]
    assert age >= calibration["max_age_seconds"]


@ONLY_SQLITE
def test_a_stale_calibration_fails_the_run_before_execution(service: Service) -> None:
    workflow = load("ghz_brisbane")
    workflow["execute"]["max_calibration_age"] = 86400
    entries, records = finished(service, workflow)
    failed = json.loads(dsse.parse(entries[-1].envelope).payload)["payload"]
    assert entries[-1].event_type.endswith("Run.Failed")
    assert failed["kind"] == "stale_calibration" and failed["error_class"] == "StaleCalibrationError"
    assert failed["step"] == "execution" and "execution" not in records
    assert failed["diagnostics"]["calibration"]["max_age_seconds"] > 86400


@pytest.mark.parametrize(("change", "field"), [
    (lambda w: w["circuit"].update(source=w["circuit"]["source"].replace("cx q[0], q[1];", "cx q[0] q[1];")),
     "workflow.circuit.source"),
    (lambda w: w["circuit"]["parameters"].pop("phi"), "workflow.circuit.parameters"),
    (lambda w: w["execute"].update(backend="fake:atlantis"), "workflow.execute.backend"),
    (lambda w: w["circuit"].update(source=w["circuit"]["source"].replace("qubit[3]", "qubit[60]")),
     "workflow.circuit.source"),
])
def test_bad_circuits_are_refused_and_nothing_is_recorded(service: Service, change: Any, field: str) -> None:
    workflow = copy.deepcopy(load("user_qasm3"))
    change(workflow)
    before = service.app.tree_size()
    code, fields = code_of(lambda: service.submit(workflow))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and fields == [field]
    assert service.app.tree_size() == before


def test_a_syntax_error_says_line_and_column_over_the_wire(service: Service) -> None:
    workflow = copy.deepcopy(load("user_qasm3"))
    workflow["circuit"]["source"] = workflow["circuit"]["source"].replace("cx q[0], q[1];", "cx q[0] q[1];")
    with pytest.raises(grpc.RpcError) as caught:
        service.submit(workflow)
    assert "line 8, column 9" in caught.value.details()  # type: ignore[attr-defined]
