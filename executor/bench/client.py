"""``qledger bench client``: a Qiskit SamplerV2 loop of small circuits, run directly on Aer's
SamplerV2 and through ``LedgerSampler`` (each call a signed, recorded run with its inclusion
proofs) in the same run: the overhead per call, p50 and p99."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from qiskit import QuantumCircuit
from qiskit_aer.primitives import SamplerV2

from qledger.bench.harness import bench_service
from qledger.client.client import Client
from qledger.client.primitives import LedgerSampler
from qledger.provenance.operations import percentile
from qledger.rpc.server import ExecutorSettings

SHOTS = 256
SEED = 2026


def small_circuits(count: int) -> list[QuantumCircuit]:
    """Three-qubit circuits, each with its own angles: what a Sampler loop sends."""
    rng = np.random.default_rng(SEED)
    circuits = []
    for angles in rng.uniform(0, np.pi, size=(count, 3)):
        circuit = QuantumCircuit(3)
        for qubit, angle in enumerate(angles):
            circuit.ry(float(angle), qubit)
        circuit.cx(0, 1)
        circuit.cx(1, 2)
        circuit.measure_all()
        circuits.append(circuit)
    return circuits


def _loop(sampler: Any, circuits: list[QuantumCircuit]) -> tuple[list[float], list[Any]]:
    seconds: list[float] = []
    results: list[Any] = []
    for circuit in circuits:
        t0 = time.perf_counter()
        results.append(sampler.run([(circuit,)], shots=SHOTS).result())
        seconds.append(time.perf_counter() - t0)
    return seconds, results


def percentile_of(values: list[float], q: float) -> float:
    found = percentile(values, q)
    assert found is not None
    return found


def run_client_bench(store: str | None, calls: int) -> None:
    circuits = small_circuits(calls)
    _loop(SamplerV2(seed=SEED), circuits[:5])  # warm-up
    direct, expected = _loop(SamplerV2(seed=SEED), circuits)
    with bench_service(store, ExecutorSettings(workers=1)) as service, \
            Client(service.address, signing_key=service.client) as client:
        sampler = LedgerSampler(client, "aer_ideal", seed=SEED)
        _loop(sampler, circuits[:5])  # warm-up
        ledger, got = _loop(sampler, circuits)
        kind = service.store_kind
    same = all(np.array_equal(a[0].data.meas.array, b[0].data.meas.array)
               for a, b in zip(got, expected, strict=True))
    print(f"client figure: {calls} SamplerV2 calls of one 3-qubit circuit, {SHOTS} shots, {kind}")
    for name, series in (("Aer's SamplerV2 directly", direct), ("LedgerSampler", ledger)):
        print(f"  {name:<28} p50 {1000 * percentile_of(series, 50):8.1f} ms   "
              f"p99 {1000 * percentile_of(series, 99):8.1f} ms")
    overhead = [b - a for a, b in zip(direct, ledger, strict=True)]
    print(f"  {'overhead per call':<28} p50 {1000 * percentile_of(overhead, 50):8.1f} ms   "
          f"p99 {1000 * percentile_of(overhead, 99):8.1f} ms   "
          f"({percentile_of(ledger, 50) / percentile_of(direct, 50):.1f} x the direct p50)")
    print(f"  results equal bit for bit: {'yes' if same else 'NO'}")
