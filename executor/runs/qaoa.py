"""QAOA for MaxCut: the circuit, the classical objective, and the brute-force baseline."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import product

from qiskit import QuantumCircuit
from qiskit.circuit import ParameterVector

Edge = tuple[int, int]


def cut_value(bits: str, graph: Sequence[Edge]) -> int:
    """Edges cut by an assignment; ``bits`` is a Qiskit count key (qubit 0 is the last character)."""
    value = bits[::-1]
    return sum(value[i] != value[j] for i, j in graph)


def brute_force_maxcut(qubits: int, graph: Sequence[Edge]) -> tuple[int, list[str]]:
    """The classical baseline: the best cut and every assignment achieving it, by enumeration."""
    best, winners = -1, []
    for assignment in product("01", repeat=qubits):
        bits = "".join(assignment)
        value = cut_value(bits, graph)
        if value > best:
            best, winners = value, [bits]
        elif value == best:
            winners.append(bits)
    return best, winners


def expected_cut(counts: dict[str, int], graph: Sequence[Edge]) -> float:
    shots = sum(counts.values())
    return sum(cut_value(bits, graph) * n for bits, n in counts.items()) / shots


def qaoa_circuit(qubits: int, graph: Sequence[Edge], layers: int) -> QuantumCircuit:
    gammas = ParameterVector("gamma", layers)
    betas = ParameterVector("beta", layers)
    circuit = QuantumCircuit(qubits, qubits, name="qaoa_maxcut")
    circuit.h(range(qubits))
    for layer in range(layers):
        for i, j in graph:
            circuit.rzz(2 * gammas[layer], i, j)
        for q in range(qubits):
            circuit.rx(2 * betas[layer], q)
    circuit.measure(range(qubits), range(qubits))
    return circuit
