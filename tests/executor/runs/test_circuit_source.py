"""Circuits a user brings (OpenQASM 3 and 2, QPY), their parameters, their width: checked when
a workflow is parsed, every refusal naming its field."""

from __future__ import annotations

import base64
import copy
import io
import struct
from typing import Any

import pytest
from qiskit import QuantumCircuit, qasm2, qasm3, qpy
from qiskit.circuit import Parameter

from qledger.runs.capacity import statevector_qubits
from qledger.runs.circuit_source import load_circuit
from qledger.runs.circuits import exact_distribution
from qledger.runs.reference_workflows import BELL, load
from qledger.runs.workflow import WorkflowError, parse_workflow, workflow_sha256

USER = load("user_qasm3")


def with_circuit(circuit: dict[str, Any], backend: str = "aer_ideal") -> dict[str, Any]:
    workflow = copy.deepcopy(BELL)
    workflow["circuit"] = circuit
    workflow["execute"]["backend"] = backend
    return workflow


def refusal(workflow: dict[str, Any]) -> WorkflowError:
    with pytest.raises(WorkflowError) as caught:
        parse_workflow(workflow)
    return caught.value


def ghz_qasm3(n: int) -> str:
    body = "".join(f"cx q[{i - 1}], q[{i}];\n" for i in range(1, n))
    head = f'OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[{n}] q;\nbit[{n}] c;\n'
    return f"{head}h q[0];\n{body}c = measure q;\n"


def qpy_of(circuit: QuantumCircuit) -> str:
    buffer = io.BytesIO()
    qpy.dump(circuit, buffer)
    return base64.b64encode(buffer.getvalue()).decode()


def test_a_parameterised_qasm3_circuit_is_bound_and_round_trips() -> None:
    spec = parse_workflow(USER)
    assert spec.source == USER["circuit"] and spec.qubits == 3 and spec.to_json() == USER
    loaded = load_circuit(USER["circuit"])
    assert loaded.parameters == ("phi", "theta") and not loaded.circuit.parameters
    assert loaded.media_type == "text/x-openqasm3"


def test_the_same_circuit_from_qasm3_qasm2_and_qpy_is_the_same_circuit() -> None:
    reference = QuantumCircuit(2, 2)
    reference.h(0)
    reference.cx(0, 1)
    reference.measure([0, 1], [0, 1])
    forms = [{"format": "qasm3", "source": qasm3.dumps(reference)},
             {"format": "qasm2", "source": qasm2.dumps(reference)},
             {"format": "qpy", "qpy": qpy_of(reference)}]
    loaded = [load_circuit(form) for form in forms]
    assert all(exact_distribution(c.circuit) == {"00": 0.5, "11": 0.5} for c in loaded)
    # Digests are of the bytes as given: stable, and different per format.
    assert [c.sha256 for c in loaded] == [load_circuit(form).sha256 for form in forms]
    assert len({c.sha256 for c in loaded}) == 3
    assert workflow_sha256(with_circuit(forms[0])) == workflow_sha256(with_circuit(dict(forms[0])))


@pytest.mark.parametrize(("edit", "field", "words"), [
    (lambda s: s.replace("cx q[0], q[1];", "cx q[0] q[1];"), "circuit.source", "line 6, column 9"),
    (lambda s: s.replace("h q[0];", "h q[0]; $$"), "circuit.source", "line 5, column 9"),
    (lambda s: s.replace("h q[0];", "frobnicate q[0];"), "circuit.source", "frobnicate"),
])
def test_qasm3_errors_say_where(edit: Any, field: str, words: str) -> None:
    error = refusal(with_circuit({"format": "qasm3", "source": edit(ghz_qasm3(2))}))
    assert error.field == field and words in error.description


def test_qasm2_errors_say_where() -> None:
    source = 'OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[2];\ncreg c[2];\nh q[0]\nmeasure q -> c;\n'
    error = refusal(with_circuit({"format": "qasm2", "source": source}))
    assert error.field == "circuit.source" and "line 6, column 1" in error.description


def test_qpy_that_is_damaged_or_from_an_unknown_version_is_refused() -> None:
    reference = QuantumCircuit(1, 1)
    reference.measure(0, 0)
    raw = bytearray(base64.b64decode(qpy_of(reference)))
    assert refusal(with_circuit({"format": "qpy", "qpy": "not base64!"})).field == "circuit.qpy"
    truncated = base64.b64encode(raw[:9]).decode()
    assert refusal(with_circuit({"format": "qpy", "qpy": truncated})).field == "circuit.qpy"
    raw[6] = 250  # the QPY version byte follows the 6-byte "QISKIT" preamble
    future = refusal(with_circuit({"format": "qpy", "qpy": base64.b64encode(bytes(raw)).decode()}))
    assert future.field == "circuit.qpy" and "250" in future.description
    assert struct.unpack("!B", bytes(raw[6:7]))[0] == 250


def test_bindings_must_name_exactly_the_circuits_parameters() -> None:
    theta = Parameter("theta")
    circuit = QuantumCircuit(1, 1)
    circuit.ry(theta, 0)
    circuit.measure(0, 0)
    form = {"format": "qpy", "qpy": qpy_of(circuit)}
    assert "missing ['theta']" in refusal(with_circuit(form)).description
    extra = {**form, "parameters": {"theta": 1, "phi": 2}}
    assert "unknown ['phi']" in refusal(with_circuit(extra)).description
    assert refusal(with_circuit({**form, "parameters": {"theta": "x"}})).field == "circuit.parameters.theta"
    assert parse_workflow(with_circuit({**form, "parameters": {"theta": 0.5}})).qubits == 1


@pytest.mark.parametrize(("circuit", "field"), [
    ({"format": "qasm4", "source": "x"}, "circuit.format"),
    ({"format": "qasm3"}, "circuit.source"),
    ({"format": "qasm3", "source": "OPENQASM 3.0;", "template": "bell"}, "circuit.template"),
    ({"format": "qasm3", "source": 'OPENQASM 3.0;\nqubit[1] q;\n'}, "circuit.source"),  # measures nothing
])
def test_malformed_circuit_members_are_named(circuit: dict[str, Any], field: str) -> None:
    assert refusal(with_circuit(circuit)).field == field


def test_a_circuit_too_wide_for_a_statevector_is_refused_up_front_but_runs_on_mps() -> None:
    wide = statevector_qubits() + 1
    error = refusal(with_circuit({"format": "qasm3", "source": ghz_qasm3(wide)}))
    assert error.field == "circuit.source" and "aer_mps" in error.description and "GiB" in error.description
    on_mps = with_circuit({"format": "qasm3", "source": ghz_qasm3(wide)}, "aer_mps")
    assert parse_workflow(on_mps).qubits == wide
    template = copy.deepcopy(BELL)
    template["circuit"] = {"template": "ghz", "qubits": wide}
    assert refusal(template).field == "circuit.qubits"


def test_device_models_are_backends_by_name_and_limit_width() -> None:
    on_device = with_circuit({"format": "qasm3", "source": ghz_qasm3(3)}, "fake:brisbane")
    assert parse_workflow(on_device).qubits == 3
    assert refusal(with_circuit({"format": "qasm3", "source": ghz_qasm3(3)}, "fake:nowhere")).field == (
        "execute.backend")
    error = refusal(with_circuit({"format": "qasm3", "source": ghz_qasm3(8)}, "fake:manila"))  # 5 qubits
    assert error.field == "circuit.source" and "5 qubits" in error.description


def test_max_calibration_age_is_for_device_models_only() -> None:
    on_device = with_circuit({"format": "qasm3", "source": ghz_qasm3(2)}, "fake:brisbane")
    on_device["execute"]["max_calibration_age"] = 3600
    assert parse_workflow(on_device).max_calibration_age == 3600
    on_simulator = copy.deepcopy(BELL)
    on_simulator["execute"]["max_calibration_age"] = 3600
    assert refusal(on_simulator).field == "execute.max_calibration_age"
    on_device["execute"]["max_calibration_age"] = -1
    assert refusal(on_device).field == "execute.max_calibration_age"


def test_exact_baseline_only_where_it_means_something() -> None:
    mid = QuantumCircuit(2, 2)
    mid.h(0)
    mid.measure(0, 0)
    mid.cx(0, 1)
    mid.measure(1, 1)
    assert exact_distribution(mid) == {}
    partial = QuantumCircuit(2, 2)
    partial.h(0)
    partial.measure(0, 0)
    assert exact_distribution(partial) == {}
    swapped = QuantumCircuit(2, 2)
    swapped.x(0)
    swapped.measure(0, 1)
    swapped.measure(1, 0)
    assert exact_distribution(swapped) == {"10": 1.0}  # qubit 0 went to clbit 1, the left bit
