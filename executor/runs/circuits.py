"""Circuit synthesis and the facts about a run's environment that its records must state."""

from __future__ import annotations

import hashlib
import platform

import qiskit
import qiskit_aer
from qiskit import QuantumCircuit

from qledger.runs.workflow import WorkflowSpec


def synthesise(template: str, qubits: int) -> QuantumCircuit:
    circuit = QuantumCircuit(qubits, qubits, name=template)
    circuit.h(0)
    for q in range(1, qubits):
        circuit.cx(q - 1, q)
    circuit.measure(range(qubits), range(qubits))
    return circuit


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def environment() -> dict[str, str]:
    return {"python": platform.python_version(), "qiskit": qiskit.__version__,
            "qiskit_aer": qiskit_aer.__version__}


def ideal_distribution(spec: WorkflowSpec) -> dict[str, float]:
    """The classical baseline: what a noiseless GHZ/Bell state gives, computed directly."""
    return {"0" * spec.qubits: 0.5, "1" * spec.qubits: 0.5}
