"""``qledger bench sweep``: one submission of a parameter sweep through the service, against
the same PUB run directly on Aer's SamplerV2, and on the simulator for counts only (what the
service runs), in the same process, the same run, interleaved; on PostgreSQL also the same
sweep shared by two executor processes."""

from __future__ import annotations

import copy
import json
import statistics
import time
from typing import Any

import numpy as np
from qiskit import transpile
from qiskit_aer import AerSimulator
from qiskit_aer.primitives import SamplerV2

from qledger.bench.harness import bench_service
from qledger.ledger import dsse
from qledger.rpc.server import ExecutorSettings
from qledger.runs.circuit_source import load_circuit
from qledger.runs.pubs import sampler_counts
from qledger.runs.reference_workflows import BELL

QUBITS = 5
TARGET_RATIO = 1.25
TARGET_RATE = 2000.0


def sweep_workflow(bindings: int, shots: int) -> dict[str, Any]:
    """A 5-qubit parameterised circuit (one angle per qubit, entangled in a ring), swept."""
    lines = ['OPENQASM 3.0;', 'include "stdgates.inc";', *[f"input float a{q};" for q in range(QUBITS)],
             f"qubit[{QUBITS}] q;", f"bit[{QUBITS}] c;", *[f"ry(a{q}) q[{q}];" for q in range(QUBITS)],
             *[f"cx q[{q}], q[{(q + 1) % QUBITS}];" for q in range(QUBITS)], "c = measure q;"]
    rng = np.random.default_rng(2026)
    values = np.round(rng.uniform(0, np.pi, size=(bindings, QUBITS)), 6).tolist()
    workflow = copy.deepcopy(BELL)
    workflow["name"] = "bench-sweep"
    workflow["circuit"] = {"format": "qasm3", "source": "\n".join(lines) + "\n"}
    workflow["execute"] |= {"shots": shots, "primitive": "sampler",
                            "pubs": [{"parameter_values": values, "shots": shots}]}
    return workflow


def _isa_and_values(workflow: dict[str, Any]) -> tuple[Any, np.ndarray, int]:
    circuit = load_circuit(workflow["circuit"], "sampler").circuit
    settings, pub = workflow["transpile"], workflow["execute"]["pubs"][0]
    isa = transpile(circuit, AerSimulator(), optimization_level=settings["optimization_level"],
                    seed_transpiler=settings["seed_transpiler"])
    return isa, np.array(pub["parameter_values"]), int(pub["shots"])


def direct_seconds(workflow: dict[str, Any]) -> float:
    """The same PUB, transpiled the same way, on Aer's SamplerV2 in one call."""
    isa, values, shots = _isa_and_values(workflow)
    t0 = time.perf_counter()
    SamplerV2(seed=workflow["execute"]["seed_simulator"]).run([(isa, values, shots)]).result()
    return time.perf_counter() - t0


def counts_only_seconds(workflow: dict[str, Any]) -> float:
    """The same PUB in one call of what the service runs per chunk: the simulator call SamplerV2
    makes, for counts only (``runs.pubs.sampler_counts``)."""
    isa, values, shots = _isa_and_values(workflow)
    t0 = time.perf_counter()
    sampler_counts(AerSimulator(), isa, values, shots, workflow["execute"]["seed_simulator"])
    return time.perf_counter() - t0


def run_sweep_bench(base: str | None, bindings: int, shots: int, repeats: int = 5) -> dict[str, float]:
    workflow = sweep_workflow(bindings, shots)
    direct_seconds(workflow)  # warm-up: Aer's first call loads its libraries
    direct: list[float] = []
    counts_only: list[float] = []
    with bench_service(base, ExecutorSettings(workers=1, poll_seconds=0.02)) as bench:
        simulated: list[float] = []  # seconds the run's chunks spent in Aer, as recorded

        def one_run() -> float:
            seconds, entries = bench.timed_run_entries(workflow, timeout=600)
            if not entries or not entries[-1].event_type.endswith("Run.Completed"):
                raise RuntimeError(f"the sweep did not complete: {entries[-1].event_type if entries else ''}")
            records = [json.loads(dsse.parse(e.envelope).payload)["payload"].get("record", {})
                       for e in entries]
            simulated.append(sum(r["execute_ms"] for r in records if r.get("kind") == "pub_result") / 1000)
            return seconds

        one_run()  # warm-up: the first run builds the backend and the transpiler's target
        service: list[float] = []
        for _ in range(repeats):  # interleaved, so that the machine's drift falls on all three
            direct.append(direct_seconds(workflow))
            counts_only.append(counts_only_seconds(workflow))
            service.append(one_run())
        recording = [s - a for s, a in zip(service, simulated[-repeats:], strict=True)]
        shared: list[float] = []
        if bench.store_kind == "PostgreSQL":  # replicas share a store only on PostgreSQL
            with bench.another_executor():
                one_run()  # warm-up of the second process
                shared = [one_run() for _ in range(repeats)]
    figures = {"direct_s": statistics.median(direct), "service_s": statistics.median(service),
               "counts_only_s": statistics.median(counts_only)}
    figures["ratio"] = figures["service_s"] / figures["direct_s"]
    figures["ratio_counts_only"] = figures["service_s"] / figures["counts_only_s"]
    figures["results_per_s"] = bindings / figures["service_s"]
    # What the service adds around Aer: submission, transpilation, recording every chunk.
    figures["recorded_per_s"] = bindings / max(statistics.median(recording), 1e-9)
    if shared:
        figures["shared_s"] = statistics.median(shared)
        figures["shared_results_per_s"] = bindings / figures["shared_s"]
    kind = bench.store_kind
    print(f"qledger bench sweep: {bindings} bindings of a {QUBITS}-qubit circuit, {shots} shots, "
          f"aer_ideal, {kind}, median of {repeats}")
    print(f"direct Aer SamplerV2, one call           {figures['direct_s'] * 1000:9.1f} ms")
    print(f"direct Aer simulator, counts only        {figures['counts_only_s'] * 1000:9.1f} ms   "
          "(the simulator call SamplerV2 makes, without its shot memory: what the service runs)")
    print(f"through the service (submit..completed)  {figures['service_s'] * 1000:9.1f} ms   "
          f"ratio {figures['ratio']:.2f} (target <= {TARGET_RATIO}); "
          f"{figures['ratio_counts_only']:.2f} x counts only")
    print(f"PUB results, end to end                  {figures['results_per_s']:9.0f} bindings/s")
    print(f"PUB results recorded (time outside Aer)  {figures['recorded_per_s']:9.0f} bindings/s "
          f"(target >= {TARGET_RATE:.0f})")
    if shared:
        print(f"shared by 2 executor processes           {figures['shared_s'] * 1000:9.1f} ms   "
              f"ratio {figures['shared_s'] / figures['direct_s']:.2f}, "
              f"{figures['shared_results_per_s']:.0f} bindings/s, "
              f"{figures['service_s'] / figures['shared_s']:.2f}x one process")
    return figures
