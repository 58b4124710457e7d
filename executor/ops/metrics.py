"""Prometheus metrics of the executor, on an HTTP endpoint (``qledger serve --metrics-port``).

Each executor has its own registry (not the process-global one), so several servers in one
process, as in the tests, do not mix their figures.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from qledger.ledger.follow import ProjectionFollower


class ExecutorMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.runs = Counter("qledger_runs", "Runs finished, by outcome", ["workflow", "backend", "status"],
                            registry=r)
        self.run_seconds = Histogram("qledger_run_duration_seconds", "Submission to end of run",
                                     ["workflow"], registry=r)
        self.queue_seconds = Histogram("qledger_queue_seconds", "Submission to first recorded step",
                                       ["workflow"], registry=r)
        self.retries = Counter("qledger_backend_retries",
                               "Failed backend calls that were retried or failed over", ["backend"],
                               registry=r)
        self.shots = Counter("qledger_shots", "Shots the simulators took: every optimiser evaluation, "
                             "quality round and PUB binding", ["backend"], registry=r)
        self.depth = Histogram("qledger_transpiled_depth", "Depth of transpiled circuits", ["workflow"],
                               buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000), registry=r)
        self.gates = Histogram("qledger_transpiled_gates", "Gate count of transpiled circuits", ["workflow"],
                               buckets=(1, 5, 10, 20, 50, 100, 200, 500, 1000, 5000), registry=r)
        self.breaker_open = Gauge("qledger_circuit_breaker_open", "1 while a backend's breaker is open",
                                  ["backend"], registry=r)
        self.projection_lag = Gauge("qledger_projection_lag_entries",
                                    "Ledger entries a projection has not processed yet", ["projection"],
                                    registry=r)
        self.entries = Counter("qledger_ledger_entries_appended", "Ledger entries written by this executor",
                               registry=r)
        self.unreadable = Counter("qledger_unreadable_entries",
                                  "Runs skipped because this version cannot interpret their entries",
                                  ["reader"], registry=r)
        self.calibration_age = Gauge("qledger_calibration_age_seconds",
                                     "Age of the oldest calibration parameter the last run on a device "
                                     "model depended on", ["backend"], registry=r)

    def serve(self, port: int, address: str = "127.0.0.1") -> Any:
        server, _thread = start_http_server(port, address, registry=self.registry)
        return server

    def watch_projections(self, follower: ProjectionFollower) -> None:
        """Lag is read at scrape time, so it is never staler than the scrape."""
        def lag_of(name: str) -> Callable[[], float]:
            return lambda: float(follower.lag().get(name, 0))

        for name in follower.runner.projections:
            self.projection_lag.labels(name).set_function(lag_of(name))

    def breaker(self, backend: str, is_open: bool) -> None:
        self.breaker_open.labels(backend).set(1 if is_open else 0)

    def run_finished(self, workflow: str, status: str, records: list[dict[str, Any]],
                     created_on: datetime, shots: int) -> None:
        """Count a run that ended; ``shots`` are the shots it took (``runs.shots``)."""
        by_kind = {r.get("kind"): r for r in records}
        execution = by_kind.get("execution", {})
        backend = str((execution.get("backend") or {}).get("name", "none"))
        self.runs.labels(workflow, backend, status).inc()
        self.run_seconds.labels(workflow).observe((datetime.now(UTC) - created_on).total_seconds())
        if records and "queue_ms" in records[0]:
            self.queue_seconds.labels(workflow).observe(records[0]["queue_ms"] / 1000)
        for attempt in execution.get("attempts", []):
            self.retries.labels(attempt["backend"]).inc()
        self.shots.labels(backend).inc(shots)
        transpilation = by_kind.get("transpilation")
        if transpilation:
            self.depth.labels(workflow).observe(transpilation["depth"])
            self.gates.labels(workflow).observe(sum(transpilation["gate_counts"].values()))
