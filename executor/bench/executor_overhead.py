"""``qledger bench executor``: service overhead over raw Aer, and throughput with 16 clients."""

from __future__ import annotations

import statistics
import time
from concurrent.futures import ThreadPoolExecutor

from qledger.bench.harness import bench_service
from qledger.rpc.server import ExecutorSettings
from qledger.runs.backends import AerIdealBackend
from qledger.runs.reference_workflows import BELL
from qledger.runs.workflow import parse_workflow


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run_executor_bench(base: str | None, runs: int, clients: int = 16) -> None:
    from qiskit import transpile

    from qledger.runs.circuits import synthesise

    spec = parse_workflow(BELL)
    backend = AerIdealBackend()
    circuit = transpile(synthesise(spec.template, spec.qubits), backend.simulator(),
                        optimization_level=spec.optimization_level, seed_transpiler=spec.seed_transpiler)
    backend.run(circuit, spec.shots, spec.seed_simulator)  # warm-up
    raw = []
    for _ in range(runs):
        t0 = time.perf_counter()
        backend.run(circuit, spec.shots, spec.seed_simulator)
        raw.append(time.perf_counter() - t0)

    settings = ExecutorSettings(workers=4, poll_seconds=0.05, max_pending=10**6)
    with bench_service(base, settings) as bench:
        def one_run() -> float:
            return bench.timed_run(BELL)[0]

        one_run()  # warm-up
        service = [one_run() for _ in range(runs)]
        t0 = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(lambda _: one_run(), range(runs)))
        concurrent_rate = runs / (time.perf_counter() - t0)

    raw_p50, raw_p99 = 1000 * statistics.median(raw), 1000 * _percentile(raw, 0.99)
    svc_p50, svc_p99 = 1000 * statistics.median(service), 1000 * _percentile(service, 0.99)
    kind = bench.store_kind
    print(f"qledger bench executor: Bell workflow, {spec.shots} shots, {runs} runs, {kind}")
    print(f"raw Aer run()                      p50 {raw_p50:8.2f} ms   p99 {raw_p99:8.2f} ms")
    print(f"through the service (submit..done) p50 {svc_p50:8.2f} ms   p99 {svc_p99:8.2f} ms")
    print(f"overhead per run                   p50 {svc_p50 - raw_p50:8.2f} ms   "
          f"p99 {svc_p99 - raw_p99:8.2f} ms   (target p50 <= 20 ms)")
    print(f"{clients} concurrent clients              {concurrent_rate:8.1f} runs/s")
