"""Running a workflow on Qiskit Aer, with every hidden input made explicit in the records."""

from __future__ import annotations

import hashlib
import platform
import time
from typing import Any

import qiskit
import qiskit_aer
from qiskit import QuantumCircuit, qasm3, transpile
from qiskit.providers.fake_provider import GenericBackendV2
from qiskit_aer import AerSimulator
from qiskit_aer.noise import NoiseModel

from executor.workflow import WorkflowSpec

StepRecord = tuple[str, dict[str, Any]]


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


def backend_for(spec: WorkflowSpec) -> tuple[AerSimulator, dict[str, Any]]:
    if spec.backend == "aer_noisy":
        assert spec.noise_seed is not None
        device = GenericBackendV2(num_qubits=max(spec.qubits, 2), seed=spec.noise_seed)
        noise = NoiseModel.from_backend(device)
        simulator = AerSimulator(noise_model=noise, basis_gates=noise.basis_gates)
        return simulator, {"source": "GenericBackendV2", "num_qubits": max(spec.qubits, 2),
                           "seed": spec.noise_seed, "basis_gates": sorted(noise.basis_gates)}
    return AerSimulator(), {}


def ideal_distribution(spec: WorkflowSpec) -> dict[str, float]:
    """The classical baseline: what a noiseless GHZ/Bell state gives, computed directly."""
    return {"0" * spec.qubits: 0.5, "1" * spec.qubits: 0.5}


def run_workflow(spec: WorkflowSpec) -> list[StepRecord]:
    steps: list[StepRecord] = []
    circuit = synthesise(spec.template, spec.qubits)
    steps.append(("circuit_synthesis", {"template": spec.template, "qubits": spec.qubits,
                                        "qasm3_sha256": sha256_text(qasm3.dumps(circuit))}))
    simulator, noise = backend_for(spec)
    t0 = time.perf_counter()
    transpiled = transpile(circuit, simulator, optimization_level=spec.optimization_level,
                           seed_transpiler=spec.seed_transpiler)
    steps.append(("transpilation", {
        "optimization_level": spec.optimization_level, "seed_transpiler": spec.seed_transpiler,
        "target": spec.backend, "qasm3_sha256": sha256_text(qasm3.dumps(transpiled)),
        "depth": transpiled.depth(), "gate_counts": dict(sorted(transpiled.count_ops().items())),
        "transpile_ms": round(1000 * (time.perf_counter() - t0), 3)}))
    t0 = time.perf_counter()
    counts = simulator.run(transpiled, shots=spec.shots,
                           seed_simulator=spec.seed_simulator).result().get_counts()
    steps.append(("execution", {
        "backend": spec.backend, "noise_model": noise, "shots": spec.shots,
        "seed_simulator": spec.seed_simulator, "counts": dict(sorted(counts.items())),
        "execute_ms": round(1000 * (time.perf_counter() - t0), 3), "environment": environment()}))
    ideal = ideal_distribution(spec)
    tvd = 0.5 * sum(abs(counts.get(k, 0) / spec.shots - ideal.get(k, 0.0))
                    for k in set(counts) | set(ideal))
    steps.append(("report", {"classical_baseline": ideal, "total_variation_distance": round(tvd, 6)}))
    return steps
