"""The Bell-state reference workflow on Qiskit Aer, with every hidden input made explicit."""

from __future__ import annotations

import hashlib
import platform
import time
from typing import Any

import qiskit
import qiskit_aer
from qiskit import QuantumCircuit, qasm3, transpile
from qiskit_aer import AerSimulator


def synthesise() -> QuantumCircuit:
    circuit = QuantumCircuit(2, 2, name="bell")
    circuit.h(0)
    circuit.cx(0, 1)
    circuit.measure([0, 1], [0, 1])
    return circuit


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def environment() -> dict[str, str]:
    return {"python": platform.python_version(), "qiskit": qiskit.__version__,
            "qiskit_aer": qiskit_aer.__version__}


def run_bell(shots: int, seed_transpiler: int, seed_simulator: int) -> list[tuple[str, dict[str, Any]]]:
    """Run the workflow; return (step, record) pairs in order."""
    steps: list[tuple[str, dict[str, Any]]] = []
    circuit = synthesise()
    steps.append(("circuit_synthesis", {"template": "bell", "parameters": {},
                                        "qasm3_sha256": sha256_text(qasm3.dumps(circuit))}))
    backend = AerSimulator(seed_simulator=seed_simulator)
    t0 = time.perf_counter()
    transpiled = transpile(circuit, backend, optimization_level=1, seed_transpiler=seed_transpiler)
    transpile_ms = 1000 * (time.perf_counter() - t0)
    steps.append(("transpilation", {
        "optimization_level": 1, "seed_transpiler": seed_transpiler, "target": backend.name,
        "qasm3_sha256": sha256_text(qasm3.dumps(transpiled)), "depth": transpiled.depth(),
        "gate_counts": dict(sorted(transpiled.count_ops().items())),
        "transpile_ms": round(transpile_ms, 3)}))
    t0 = time.perf_counter()
    counts = backend.run(transpiled, shots=shots, seed_simulator=seed_simulator).result().get_counts()
    steps.append(("execution", {
        "backend": backend.name, "noise_model": None, "shots": shots,
        "seed_simulator": seed_simulator, "counts": dict(sorted(counts.items())),
        "execute_ms": round(1000 * (time.perf_counter() - t0), 3), "environment": environment()}))
    ideal = {"00": 0.5, "11": 0.5}
    tvd = 0.5 * sum(abs(counts.get(k, 0) / shots - ideal.get(k, 0.0))
                    for k in set(counts) | set(ideal))
    steps.append(("report", {"classical_baseline": ideal,
                             "total_variation_distance": round(tvd, 6)}))
    return steps
