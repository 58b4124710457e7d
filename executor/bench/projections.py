"""``qledger bench projections``: rebuild rates, lineage queries, and one run's bundle export
and verify, in a small ledger and in the full one, so "independent of ledger size" is a ratio
measured in the same run.

The ledger is filled with real run histories: one Bell run executed on Aer gives the step
records, and every synthetic run records them again under its own id, signed by the client
and the executor keys and chained like any other entry.
"""

from __future__ import annotations

import hashlib
import tempfile
import time
import tracemalloc
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID

from qledger.ledger.admin import CHECKPOINTER, add_key, export_key, init_store, open_admin_app
from qledger.ledger.app import LedgerApp
from qledger.ledger.bench import _bench_store
from qledger.ledger.canonical import canonical_bytes
from qledger.ledger.keys import KeyStore
from qledger.ledger.projection import ProjectionRunner
from qledger.provenance.bundle import verify_bundle
from qledger.provenance.bundle_export import export_bundle
from qledger.provenance.lineage_index import RunFilter, find_nodes, find_runs, walk
from qledger.provenance.projections import projection_runner
from qledger.runs.backends import BackendCatalog
from qledger.runs.breaker import BreakerBoard
from qledger.runs.pipeline import ExecutionContext, run_steps
from qledger.runs.reference_workflows import BELL
from qledger.runs.run import Run
from qledger.runs.workflow import parse_workflow

T = TypeVar("T")
RUNS_PER_SAVE = 50


def _timed(action: Callable[[], T]) -> tuple[T, float]:
    start = time.perf_counter()
    value = action()
    return value, time.perf_counter() - start


def _fill(app: LedgerApp, records: list[tuple[str, dict[str, Any]]], until: int) -> list[UUID]:
    """Append whole runs until the ledger holds at least ``until`` entries."""
    sha = hashlib.sha256(canonical_bytes(BELL)).hexdigest()
    runs: list[UUID] = []
    while app.tree_size() < until:
        batch = []
        for _ in range(RUNS_PER_SAVE):
            run = Run(principal="alice", idempotency_key=uuid.uuid4().hex, nonce=uuid.uuid4().hex,
                      workflow=BELL, workflow_sha256=sha, rerun_of=None)
            for step, record in records:
                run.record_step(principal="executor-1", step=step, record=record)
            run.complete(principal="executor-1", summary={"steps": len(records)})
            batch.append(run)
        app.save(*batch)
        runs += [r.id for r in batch]
    return runs


def _bundle_times(app: LedgerApp, keys: KeyStore, run: UUID) -> tuple[float, float, int]:
    exporter = export_key(app, keys)
    data, export_s = _timed(lambda: export_bundle(app, run, exporter, keys.load(CHECKPOINTER)))
    _, verify_s = _timed(lambda: verify_bundle(data, exporter.public))
    return export_s, verify_s, len(data)


def _heap_peak(runner: ProjectionRunner) -> int:
    """Peak bytes Python allocates while rebuilding the lineage projection from nothing."""
    tracemalloc.start()
    try:
        runner.rebuild(["lineage"])
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def run_projections_bench(base: str | None, entries: int) -> None:
    records = list(run_steps(parse_workflow(BELL), ExecutionContext(BackendCatalog(), BreakerBoard())))
    small = max(1000, entries // 10)
    with _bench_store(base) as url, tempfile.TemporaryDirectory() as home:
        keys = KeyStore(Path(home))
        app = open_admin_app(url, keys)
        runner = projection_runner(app)
        init_store(app, keys, projections=runner)
        for principal, purpose in (("alice", "client"), ("executor-1", "executor")):
            app.add_signer(add_key(app, keys, principal, purpose))
        kind = "PostgreSQL" if app.store.is_postgres else "SQLite"
        print(f"qledger bench projections: {kind}, Bell run histories of {len(records) + 2} entries each")

        early, fill_small = _timed(lambda: _fill(app, records, small))
        small_peak = _heap_peak(runner)
        _bundle_times(app, keys, early[0])  # warm-up: export key, caches
        small_export, small_verify, small_bytes = _bundle_times(app, keys, early[len(early) // 2])
        runs, fill_rest = _timed(lambda: _fill(app, records, entries))
        size = app.tree_size()
        print(f"filled {size} entries in {fill_small + fill_rest:.1f}s "
              f"({size / (fill_small + fill_rest):,.0f} entries/s through the signing ledger)")

        for name in runner.projections:
            count, seconds = _timed(lambda name=name: runner.rebuild([name]))  # type: ignore[misc]
            print(f"rebuild {name:<11} {count:>8} entries in {seconds:6.2f}s  "
                  f"{count / seconds:9,.0f} entries/s (target >= 5,000)")
        peak = _heap_peak(runner)
        print(f"rebuild lineage peak Python heap: {small_peak / 2**20:.1f} MiB at {small} entries, "
              f"{peak / 2**20:.1f} MiB at {size} (x{peak / small_peak:.2f}; paged, {runner.page_size} "
              "entries per transaction)")

        middle = runs[len(runs) // 2]
        result = f"qledger:report/{middle}/report"
        _, up = _timed(lambda: runner.read("lineage", lambda db: walk(db, [result], "ancestors")))
        circuit = f"qledger:transpilation/{middle}/transpilation"
        _, down = _timed(lambda: runner.read("lineage", lambda db: walk(db, [circuit], "descendants")))
        _, lookup = _timed(lambda: runner.read("lineage", lambda db: find_nodes(db, result)))
        _, by_owner = _timed(lambda: runner.read("lineage", lambda db: find_runs(
            db, RunFilter(owner="alice", limit=100))))
        print(f"lineage query: ancestors of a result {1000 * up:7.2f} ms, descendants of a circuit "
              f"{1000 * down:7.2f} ms, node lookup {1000 * lookup:7.2f} ms, 100 newest runs of an owner "
              f"{1000 * by_owner:7.2f} ms")

        export_s, verify_s, size_bytes = _bundle_times(app, keys, middle)
        print(f"bundle of one run at {small:>8} entries: export {1000 * small_export:7.1f} ms, verify "
              f"{1000 * small_verify:7.1f} ms, {small_bytes:,} bytes")
        print(f"bundle of one run at {size:>8} entries: export {1000 * export_s:7.1f} ms, verify "
              f"{1000 * verify_s:7.1f} ms, {size_bytes:,} bytes (target <= 1000 ms each)")
        print(f"large/small ledger: export x{export_s / small_export:.2f}, "
              f"verify x{verify_s / small_verify:.2f}")
