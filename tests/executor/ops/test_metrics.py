"""After reference runs, the Prometheus endpoint shows the expected figures."""

from __future__ import annotations

import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from qledger.runs.backends import BackendCatalog, FaultConfig
from qledger.runs.pipeline import RetryPolicy
from qledger.runs.reference_workflows import BELL
from tests.executor.conftest import ServiceFactory


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_endpoint_after_runs(service_factory: ServiceFactory) -> None:
    catalog = BackendCatalog({"down": ("aer_ideal", FaultConfig(failure_rate=1.0))})
    service = service_factory(catalog, metrics_port=0, breaker_threshold=2,
                              retry=RetryPolicy(attempts=2, initial_wait=0.01, max_wait=0.02))
    for workflow in (BELL, BELL, {**BELL, "execute": {**BELL["execute"], "backend": "down"}}):
        service.watch(service.submit(workflow).run.run_id)
    port = service.running.metrics_port
    assert port
    follower = service.running.follower
    assert follower is not None
    deadline = time.monotonic() + 20
    while set(follower.lag().values()) != {0} and time.monotonic() < deadline:
        time.sleep(0.05)
    samples = scrape(port)
    for projection in ("lineage", "operations"):
        assert samples[("qledger_projection_lag_entries", (("projection", projection),))] == 0
    ok = ("qledger_runs_total", (("backend", "aer_ideal"), ("status", "completed"),
                                 ("workflow", "bell-sampling")))
    failed = ("qledger_runs_total", (("backend", "none"), ("status", "failed"),
                                     ("workflow", "bell-sampling")))
    assert samples[ok] == 2 and samples[failed] == 1
    assert samples[("qledger_shots_total", (("backend", "aer_ideal"),))] == 2 * BELL["execute"]["shots"]
    assert samples[("qledger_transpiled_depth_count", (("workflow", "bell-sampling"),))] == 3
    assert samples[("qledger_run_duration_seconds_count", (("workflow", "bell-sampling"),))] == 3
    assert samples[("qledger_circuit_breaker_open", (("backend", "down"),))] == 1
    # 2 runs x (6 steps + Completed), and the failed run: 3 steps + Failed.
    assert samples[("qledger_ledger_entries_appended_total", ())] == 2 * 7 + 4
