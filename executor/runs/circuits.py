"""Circuit synthesis and the facts about a run's environment that its records must state."""

from __future__ import annotations

import hashlib
import platform

import qiskit
import qiskit_aer
from qiskit import QuantumCircuit
from qiskit.quantum_info import Statevector

from qledger.runs.circuit_source import load_circuit
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


EXACT_MAX_QUBITS = 20  # a statevector of 2**20 amplitudes is 16 MiB: cheap enough per run


def ideal_distribution(spec: WorkflowSpec) -> dict[str, float]:
    """The classical baseline: what a noiseless GHZ/Bell state gives, computed directly; for a
    circuit the user brought, its exact distribution where one can be computed ({} if not)."""
    if spec.source is not None:
        return exact_distribution(load_circuit(spec.source).circuit)
    return {"0" * spec.qubits: 0.5, "1" * spec.qubits: 0.5}


def exact_distribution(circuit: QuantumCircuit) -> dict[str, float]:
    """Noiseless probabilities of the classical outcomes, spelt as Aer's counts are (clbit 0
    rightmost), from the statevector: for a circuit of one classical register whose every bit
    is measured once, at the end.  {} for anything else (mid-circuit measurement, resets,
    several registers, too wide)."""
    if circuit.num_qubits > EXACT_MAX_QUBITS or len(circuit.cregs) != 1:
        return {}
    measured: dict[int, int] = {}
    for instruction in circuit.data:
        if instruction.operation.name == "measure":
            clbit = circuit.find_bit(instruction.clbits[0]).index
            if clbit in measured:
                return {}
            measured[clbit] = circuit.find_bit(instruction.qubits[0]).index
    if sorted(measured) != list(range(circuit.num_clbits)):
        return {}
    unitary = circuit.remove_final_measurements(inplace=False)
    if any(i.operation.name in ("measure", "reset") for i in unitary.data):
        return {}
    try:
        probabilities = Statevector(unitary).probabilities_dict(qargs=[measured[c] for c in sorted(measured)])
    except Exception:  # not a unitary circuit (conditions, control flow): no exact baseline
        return {}
    return {str(bits): round(float(p), 12) for bits, p in sorted(probabilities.items()) if p > 1e-12}
