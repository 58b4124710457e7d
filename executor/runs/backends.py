"""Backends behind one interface, selected by name, and a fault-injecting one for reliability tests.

Failures carry their class, because the class decides what happens next:
``deterministic`` (retrying cannot help: fail fast) or ``environmental`` (retry with
backoff, then fail over).
"""

from __future__ import annotations

import random
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from qiskit import QuantumCircuit
from qiskit.providers.fake_provider import GenericBackendV2
from qiskit.transpiler import Target
from qiskit_aer import AerSimulator
from qiskit_aer.noise import NoiseModel

from qledger.ledger.errors import QledgerError
from qledger.runs.calibration import CalibrationSnapshot
from qledger.runs.devices import DEVICE_MODELS, SIMULATORS, fake_device
from qledger.runs.pubs import Pub, run_chunk, run_job
from qledger.runs.workflow import WorkflowError


class BackendError(QledgerError):
    kind = "environmental"


class BackendUnavailableError(BackendError):
    pass


class BackendTimeoutError(BackendError):
    pass


class QuotaExceededError(BackendError):
    pass


class BreakerOpenError(BackendError):
    """The backend's circuit breaker is open: it is not even asked."""


class CircuitRejectedError(BackendError):
    kind = "deterministic"


class StaleCalibrationError(BackendError):
    """The device model's calibration is older than the workflow allows: the run is not executed."""

    kind = "stale_calibration"


class Backend(ABC):
    name: str
    _target: Target | None = None

    @abstractmethod
    def simulator(self) -> AerSimulator:
        """The Aer simulator that runs circuits (and is the transpilation target)."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """Everything about the backend that affects results (noise model and its seed)."""

    def transpile_target(self) -> Target:
        # AerSimulator.target builds a new Target on every access, which cost ~100 ms per
        # transpile; the target never changes for a backend instance, so build it once.
        if self._target is None:
            self._target = self.simulator().target
        return self._target

    def run(self, circuit: QuantumCircuit, shots: int, seed_simulator: int) -> dict[str, int]:
        result = self.simulator().run(circuit, shots=shots, seed_simulator=seed_simulator).result()
        return {str(k): int(v) for k, v in result.get_counts().items()}

    def run_pub_chunk(self, circuit: QuantumCircuit, pub: Pub, start: int, stop: int,
                      seed: int) -> dict[str, Any]:
        """Bindings ``start``..``stop`` of ``pub`` on this simulator: Estimator PUBs on Aer's
        ``EstimatorV2``, Sampler PUBs' counts as ``SamplerV2`` would give them (``sampler_counts``)."""
        return run_chunk(self.simulator(), circuit, pub, start, stop, seed)

    def run_job(self, circuit: QuantumCircuit, pubs: Sequence[Pub], seed: int) -> list[dict[str, Any]]:
        """Every Sampler PUB in one job of Aer's V2 primitive over this simulator."""
        return run_job(self.simulator(), circuit, pubs, seed)


class AerIdealBackend(Backend):
    name = "aer_ideal"

    def __init__(self) -> None:
        self._simulator = AerSimulator()

    def simulator(self) -> AerSimulator:
        return self._simulator

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "noise_model": None}


class AerNoisyBackend(Backend):
    """Aer with the noise model of a ``GenericBackendV2`` built from a fixed seed."""

    name = "aer_noisy"

    def __init__(self, qubits: int, noise_seed: int) -> None:
        self.qubits, self.noise_seed = max(qubits, 2), noise_seed
        device = GenericBackendV2(num_qubits=self.qubits, seed=noise_seed)
        noise = NoiseModel.from_backend(device)
        self.basis_gates = sorted(noise.basis_gates)
        self._simulator = AerSimulator(noise_model=noise, basis_gates=noise.basis_gates)

    def simulator(self) -> AerSimulator:
        return self._simulator

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "noise_model": {"source": "GenericBackendV2",
                                                   "num_qubits": self.qubits, "seed": self.noise_seed,
                                                   "basis_gates": self.basis_gates}}


class AerMpsBackend(Backend):
    """Aer's matrix product state method: memory grows with entanglement, not width."""

    name = "aer_mps"

    def __init__(self) -> None:
        self._simulator = AerSimulator(method="matrix_product_state")

    def simulator(self) -> AerSimulator:
        return self._simulator

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "method": "matrix_product_state", "noise_model": None}


class DeviceModelBackend(Backend):
    """A real device's model from ``qiskit_ibm_runtime.fake_provider``: its coupling map and
    basis for transpilation, its calibration snapshot for the noise (``AerSimulator.from_backend``)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.device = fake_device(name)
        self.snapshot = CalibrationSnapshot.of(self.device)
        self._simulator = AerSimulator.from_backend(self.device)

    def simulator(self) -> AerSimulator:
        return self._simulator

    def transpile_target(self) -> Target:
        return self.device.target

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "device": self.device.name,
                "backend_version": self.snapshot.backend_version,
                "noise_model": {"source": "calibration snapshot", "sha256": self.snapshot.sha256}}


@dataclass(frozen=True)
class FaultConfig:
    failure_rate: float = 0.0  # chance each call raises BackendUnavailableError
    latency_seconds: float = 0.0  # added before every call
    reject: bool = False  # every circuit is rejected (a deterministic failure)
    seed: int = 0


class FaultInjectingBackend(Backend):
    """Wraps another backend and fails, delays or rejects as configured (seeded, so tests repeat)."""

    def __init__(self, name: str, inner: Backend, config: FaultConfig) -> None:
        self.name, self.inner, self.config = name, inner, config
        self._random = random.Random(config.seed)
        self._lock = threading.Lock()
        self.calls = 0

    def simulator(self) -> AerSimulator:
        return self.inner.simulator()

    def transpile_target(self) -> Target:
        return self.inner.transpile_target()

    def describe(self) -> dict[str, Any]:
        return {**self.inner.describe(), "name": self.name, "faults": vars(self.config)}

    def _fault(self, circuit: QuantumCircuit) -> None:
        with self._lock:
            self.calls += 1
            fail = self._random.random() < self.config.failure_rate
        time.sleep(self.config.latency_seconds)
        if self.config.reject:
            raise CircuitRejectedError(f"{self.name} rejected circuit {circuit.name!r}")
        if fail:
            raise BackendUnavailableError(f"{self.name} is unavailable (injected fault)")

    def run(self, circuit: QuantumCircuit, shots: int, seed_simulator: int) -> dict[str, int]:
        self._fault(circuit)
        return self.inner.run(circuit, shots, seed_simulator)

    def run_pub_chunk(self, circuit: QuantumCircuit, pub: Pub, start: int, stop: int,
                      seed: int) -> dict[str, Any]:
        self._fault(circuit)
        return self.inner.run_pub_chunk(circuit, pub, start, stop, seed)

    def run_job(self, circuit: QuantumCircuit, pubs: Sequence[Pub], seed: int) -> list[dict[str, Any]]:
        self._fault(circuit)
        return self.inner.run_job(circuit, pubs, seed)


class BackendCatalog:
    """Backends by name: the two Aer simulators, plus any fault-injecting ones configured."""

    def __init__(self, faulty: dict[str, tuple[str, FaultConfig]] | None = None) -> None:
        self.faulty = dict(faulty or {})
        self._instances: dict[tuple[str, int, int | None], Backend] = {}
        self._lock = threading.RLock()

    def names(self) -> frozenset[str]:
        return frozenset({*SIMULATORS, *DEVICE_MODELS, *self.faulty})

    def get(self, name: str, qubits: int, noise_seed: int | None) -> Backend:
        """One instance per (name, qubits, noise seed): built once, reused by every run."""
        if name not in self.names():
            raise KeyError(name)
        if name == "aer_ideal" or name in DEVICE_MODELS or name == "aer_mps":
            key: tuple[str, int, int | None] = (name, 0, None)
        elif name in self.faulty:
            key = (name, 0, None)  # one per name, so its seeded fault sequence is shared
        else:
            key = (name, max(qubits, 2), noise_seed)
        with self._lock:
            if key not in self._instances:
                self._instances[key] = self._build(name, qubits, noise_seed)
            return self._instances[key]

    def _build(self, name: str, qubits: int, noise_seed: int | None) -> Backend:
        if name == "aer_ideal":
            return AerIdealBackend()
        if name == "aer_mps":
            return AerMpsBackend()
        if name in DEVICE_MODELS:
            return DeviceModelBackend(name)
        if name == "aer_noisy":
            if noise_seed is None:
                raise WorkflowError("execute.noise_seed", "aer_noisy needs a noise seed")
            return AerNoisyBackend(qubits, noise_seed)
        inner_name, config = self.faulty[name]
        return FaultInjectingBackend(name, self.get(inner_name, qubits, noise_seed), config)
