"""Projections: followed live, rebuilt from nothing, restarted mid-way, followed by two at once;
lineage queries and the operations view over real runs on both stores."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
from prov.model import ProvDocument
from typer.testing import CliRunner

from qledger.api import qledger_pb2 as pb
from qledger.cli import app as cli
from qledger.ledger.admin import EXPORTER
from qledger.ledger.app import LedgerApp
from qledger.ledger.follow import LISTEN_APPLICATION_NAME
from qledger.ledger.keys import KeyStore
from qledger.ledger.projection import ProjectedEntry, ProjectionDB, ProjectionRunner
from qledger.provenance.bundle import verify_bundle
from qledger.provenance.lineage_index import RunFilter, artifact_lineage, find_nodes, find_runs, walk
from qledger.provenance.operations import OperationsProjection, operation_rows, operations_view
from qledger.provenance.projections import projection_follower, projection_runner
from qledger.runs.backends import BackendCatalog, FaultConfig
from qledger.runs.pipeline import RetryPolicy
from qledger.runs.reference_workflows import BELL, GHZ_NOISY, load
from tests.executor.conftest import Service, ServiceFactory, step_records
from tests.executor.rpc.test_grpc import code_of, field_violations
from tests.ledger.helpers import make_ledger, write_notes

QAOA = load("qaoa_maxcut")


def wait_for(condition: Callable[[], bool], seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {seconds}s")
        time.sleep(0.05)


def dumps(runner: ProjectionRunner) -> dict[str, Any]:
    return {name: runner.read(name, p.dump) for name, p in runner.projections.items()}


def entries_of(service: Service, run_id: str) -> list[dict[str, Any]]:
    from qledger.ledger import dsse

    return [json.loads(dsse.parse(e.envelope).payload) for e in service.watch(run_id)]


def dataset_sha(service: Service, run_id: str) -> str:
    return str(step_records(entries_of(service, run_id))["data_preparation"]["datasets"]["graph"]["sha256"])


@pytest.fixture
def ran(service_factory: ServiceFactory) -> tuple[Service, dict[str, str]]:
    """Six runs: bell twice, noisy GHZ, QAOA (with its graph dataset), bell on a backend that is
    down (fails), and bell on a flaky backend that needed retries.  The server's follower kept
    the projections up to here and is then stopped."""
    catalog = BackendCatalog({"flaky": ("aer_ideal", FaultConfig(failure_rate=0.5, seed=3)),
                              "down": ("aer_ideal", FaultConfig(failure_rate=1.0))})
    service = service_factory(catalog, export=True, projection_poll_seconds=0.1,
                              retry=RetryPolicy(attempts=8, initial_wait=0.01, max_wait=0.05))
    runs = {}
    for name, body in (("bell", BELL), ("bell_again", BELL), ("ghz", GHZ_NOISY), ("qaoa", QAOA),
                       ("down", {**BELL, "execute": {**BELL["execute"], "backend": "down"}}),
                       ("flaky", {**BELL, "execute": {**BELL["execute"], "backend": "flaky"}})):
        runs[name] = service.submit(body).run.run_id
        service.watch(runs[name])
    follower = service.running.follower
    assert follower is not None

    def settled() -> bool:
        # A run's last entry reaches watchers before the worker's own bookkeeping after it (a
        # breaker change, say) is appended: wait until the log stops growing, then for the follower.
        size = service.app.tree_size()
        time.sleep(0.3)
        return size == service.app.tree_size() and set(follower.lag().values()) == {0}

    wait_for(settled)
    follower.stop()  # the tests rebuild and restart these tables; a live follower would race them
    return service, runs


def test_rebuilt_equals_incrementally_followed(ran: tuple[Service, dict[str, str]]) -> None:
    service, _ = ran
    runner = projection_runner(service.app)
    followed = dumps(runner)
    assert len(followed["operations"]["ops_runs"]) == 6
    assert len(followed["lineage"]["lineage_runs"]) == 6
    assert runner.rebuild() == len(runner.projections) * service.app.tree_size()
    assert dumps(runner) == followed
    # Pages of 3 entries come to the same state; progress is reported page by page.
    small = projection_runner(service.app, page_size=3)
    reported: list[tuple[int, int]] = []
    small.rebuild(["operations"], progress=lambda done, total: reported.append((done, total)))
    size = service.app.tree_size()
    assert reported[-1] == (size, size) and len(reported) == -(-size // 3)
    assert [done for done, _ in reported] == sorted(done for done, _ in reported)
    small.rebuild(["lineage"])
    for name in small.projections:
        assert small.read(name, small.projections[name].dump) == followed[name]


class Killed(BaseException):
    """Not an Exception: nothing in the process survives a kill -9, so nothing may catch it."""


class Crashing(OperationsProjection):
    """Dies while applying the page that holds ``position``, like a process killed mid-page."""

    def __init__(self, position: int) -> None:
        self.position = position

    def apply(self, db: ProjectionDB, entries: Sequence[ProjectedEntry]) -> None:
        super().apply(db, entries)
        if any(e.position == self.position for e in entries):
            raise Killed("killed mid-page")


def test_restart_neither_skips_nor_double_counts(ran: tuple[Service, dict[str, str]]) -> None:
    service, _ = ran
    app = service.app
    reference = projection_runner(app).read("operations", OperationsProjection().dump)
    crash_at = app.tree_size() - 7
    crashing = ProjectionRunner(app.ledger, app.source(), [Crashing(crash_at)], page_size=4)
    with pytest.raises(Killed, match="killed mid-page"):
        crashing.rebuild()
    stopped_at = crashing.positions()["operations"]
    assert crash_at - 4 <= stopped_at < crash_at  # the failed page left nothing behind
    restarted = projection_runner(app, page_size=4)
    restarted.catch_up(["operations"])
    assert restarted.read("operations", OperationsProjection().dump) == reference


def test_two_followers_apply_each_page_once(ran: tuple[Service, dict[str, str]]) -> None:
    service, _ = ran
    app = service.app
    reference = dumps(projection_runner(app))
    projection_runner(app).rebuild()  # leaves the projections current ...
    with app.ledger.write_transaction() as cursor:  # ... then winds their tracking back to 0
        ProjectionDB(cursor, app.ledger, ()).execute("UPDATE {tracking} SET position = 0")
    tables = [t for p in projection_runner(app).projections.values() for t in p.tables]
    with app.ledger.write_transaction() as cursor:
        db = ProjectionDB(cursor, app.ledger, tables)
        for table in tables:
            db.execute(f"DELETE FROM {{{table}}}")
    errors: list[BaseException] = []

    def follow() -> None:
        try:
            projection_runner(app, page_size=2).catch_up()
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=follow) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    # Shots and retries are sums: a page applied twice would double them.
    assert dumps(projection_runner(app)) == reference


def test_lineage_queries(ran: tuple[Service, dict[str, str]]) -> None:
    service, runs = ran
    runner = projection_runner(service.app)
    found = runner.read("lineage", lambda db: find_runs(db, RunFilter(workflow="bell-sampling")))
    assert {r["run_id"] for r in found} == {runs["bell"], runs["bell_again"], runs["down"], runs["flaky"]}
    failed = runner.read("lineage", lambda db: find_runs(db, RunFilter(workflow="bell-sampling")))
    assert {r["run_id"]: r["status"] for r in failed}[runs["down"]] == "failed"
    assert [r["run_id"] for r in runner.read("lineage", lambda db: find_runs(db, RunFilter(
        backend="aer_noisy")))] == [runs["ghz"]]
    graph_sha = dataset_sha(service, runs["qaoa"])
    assert [r["run_id"] for r in runner.read("lineage", lambda db: find_runs(db, RunFilter(
        dataset=graph_sha)))] == [runs["qaoa"]]
    assert len(runner.read("lineage", lambda db: find_runs(db, RunFilter(owner="alice")))) == 6
    assert runner.read("lineage", lambda db: find_runs(db, RunFilter(owner="mallory"))) == []
    future = datetime.now(UTC) + timedelta(hours=1)
    assert runner.read("lineage", lambda db: find_runs(db, RunFilter(since=future))) == []
    assert len(runner.read("lineage", lambda db: find_runs(db, RunFilter(until=future)))) == 6
    newest = runner.read("lineage", lambda db: find_runs(db, RunFilter(limit=1)))
    assert [r["run_id"] for r in newest] == [runs["flaky"]]

    # Ancestors of a QAOA result: its steps, the dataset and workflow it came from, the agents.
    result = f"qledger:report/{runs['qaoa']}/report"
    up = runner.read("lineage", lambda db: walk(db, [result], "ancestors"))
    ids = {n.id for n in up.nodes}
    assert f"qledger:dataset/{graph_sha}" in ids and f"qledger:step/{runs['qaoa']}/execution" in ids
    assert "qledger:backend/aer_ideal" in ids and "qledger:principal/alice" in ids
    assert not any(runs["bell"] in i for i in ids), "another run's nodes are not ancestors"
    # Descendants of the dataset: that run's outputs, nothing of the runs that did not use it.
    down = runner.read("lineage", lambda db: walk(db, find_nodes(db, graph_sha), "descendants"))
    assert result in {n.id for n in down.nodes}
    assert not any(runs["ghz"] in n.id for n in down.nodes)
    # The bell workflow definition is shared by content hash: both bell runs descend from it.
    shared = runner.read("lineage", lambda db: walk(db, find_nodes(
        db, entries_of(service, runs["bell"])[0]["payload"]["workflow_sha256"]), "descendants"))
    shared_ids = {n.id for n in shared.nodes}
    assert f"qledger:report/{runs['bell']}/report" in shared_ids
    assert f"qledger:report/{runs['bell_again']}/report" in shared_ids
    assert f"qledger:report/{runs['flaky']}/report" not in shared_ids  # its backend differs: another workflow
    # Every node carries its ledger position and every relation joins two nodes of the graph.
    both = runner.read("lineage", lambda db: artifact_lineage(db, graph_sha))
    node_ids = {n.id for n in both.nodes}
    assert all(n.position >= 1 for n in both.nodes)
    assert all(r.source in node_ids and r.target in node_ids for r in both.relations)


def test_operations_view(ran: tuple[Service, dict[str, str]]) -> None:
    service, runs = ran
    runner = projection_runner(service.app)
    rows = runner.read("operations", lambda db: operation_rows(db))
    by_backend = {g["backend"]: g for g in operations_view(rows, "backend")}
    assert set(by_backend) == {"aer_ideal", "aer_noisy", "flaky", "(none)"}  # (none): failed before executing
    assert by_backend["(none)"]["failed"] == 1 and by_backend["(none)"]["success_rate"] == 0.0
    flaky = step_records(entries_of(service, runs["flaky"]))["execution"]
    assert by_backend["flaky"]["retries"] == len(flaky["attempts"]) > 0
    assert by_backend["aer_ideal"]["runs"] == 3 and by_backend["aer_ideal"]["success_rate"] == 1.0
    qaoa = step_records(entries_of(service, runs["qaoa"]))
    # Shots taken: the optimiser loop's every evaluation, then the final execution.
    loop = len(qaoa["hybrid_optimisation"]["iterations"]) * QAOA["execute"]["shots"]
    assert loop > 0 and qaoa["hybrid_optimisation"]["shots_taken"] == loop
    final = qaoa["execution"]["shots"]
    assert by_backend["aer_ideal"]["shots"] == 2 * BELL["execute"]["shots"] + loop + final
    day = by_backend["aer_noisy"]["circuits_by_day"][0]
    ghz = step_records(entries_of(service, runs["ghz"]))["transpilation"]
    assert day["mean_depth"] == ghz["depth"] and day["mean_gate_count"] == sum(ghz["gate_counts"].values())
    for group in by_backend.values():
        assert group["queue_ms_p50"] is not None and group["queue_ms_p50"] >= 0
        assert group["execution_ms_p50"] <= group["execution_ms_p95"] <= group["execution_ms_p99"]
    by_workflow = {g["workflow"]: g for g in operations_view(rows, "workflow")}
    assert by_workflow["bell-sampling"]["success_rate"] == 0.75
    assert by_workflow["bell-sampling"]["runs"] == 4 and by_workflow["qaoa-maxcut-ring5"]["runs"] == 1


def test_cli_views(ran: tuple[Service, dict[str, str]]) -> None:
    service, runs = ran
    store, cli_runner = service.app.store.url, CliRunner()
    env = {"QLEDGER_HOME": str(service.home)}

    def ok(*args: str) -> str:
        result = cli_runner.invoke(cli, [*args, "--store", store], env=env)
        assert result.exit_code == 0, result.output
        return result.output

    listed = json.loads(ok("runs", "list", "--backend", "aer_noisy", "--format", "json"))
    assert [(r["run_id"], r["status"]) for r in listed] == [(runs["ghz"], "completed")]
    assert {r["run_id"] for r in json.loads(ok("runs", "list", "--format", "json"))} == set(runs.values())
    assert len(ok("runs", "list", "--workflow", "nothing-by-this-name").splitlines()) == 1  # the header
    # The server answers the same filters.
    def listed_by_server(**filters: str) -> list[str]:
        return [r.run_id for r in service.executor.ListRuns(pb.ListRunsRequest(**filters), timeout=30).runs]

    assert listed_by_server(backend="aer_noisy") == [runs["ghz"]]
    assert listed_by_server(workflow="qaoa-maxcut-ring5", since="2000-01-01T00:00:00") == [runs["qaoa"]]
    assert listed_by_server(until="2000-01-01T00:00:00Z") == []
    with pytest.raises(grpc.RpcError) as refused:
        listed_by_server(since="yesterday")
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert field_violations(refused.value) == ["since"]
    assert "aer_noisy" in ok("ops", "--by", "backend") and json.loads(ok("ops", "--format", "json"))
    status = json.loads(ok("projections", "status"))
    assert status["lineage"]["lag"] == 0
    assert "rebuilt lineage: " in ok("projections", "rebuild", "lineage")
    result = f"qledger:report/{runs['ghz']}/report"
    ancestors = json.loads(ok("query", "ancestors", result))
    assert any(n["id"] == "qledger:backend/aer_noisy" for n in ancestors)
    prov = ok("lineage", result)
    document = ProvDocument.deserialize(content=prov, format="json")
    assert result in {str(r.identifier) for r in document.get_records()}
    svg = ok("lineage", result, "--format", "svg")
    assert svg.lstrip().startswith("<svg") and "report" in svg and svg.rstrip().endswith("</svg>")
    bad = cli_runner.invoke(cli, ["lineage", "qledger:nothing/here", "--store", store], env=env)
    assert bad.exit_code == 2 and "no lineage node" in bad.output
    bad = cli_runner.invoke(cli, ["projections", "rebuild", "nope", "--store", store], env=env)
    assert bad.exit_code == 2 and "no projection named nope" in bad.output


def test_get_lineage_of_an_artifact_over_grpc(ran: tuple[Service, dict[str, str]]) -> None:
    service, runs = ran
    graph_sha = dataset_sha(service, runs["qaoa"])
    reply = service.ledger.GetLineage(pb.RunRef(artifact=graph_sha), timeout=30)
    lineage = json.loads(reply.prov_json)
    assert f"qledger:report/{runs['qaoa']}/report" in lineage["entity"]
    # The bundle of an artifact is the bundle of the run that generated it.
    bundle = service.ledger.ExportBundle(pb.RunRef(artifact=f"qledger:report/{runs['qaoa']}/report"),
                                         timeout=30)
    exporter = KeyStore(service.home).load(EXPORTER).public
    assert verify_bundle(bundle.envelope, exporter).stream_id == runs["qaoa"]
    for call, request, code in (
            (service.ledger.GetLineage, pb.RunRef(artifact="0" * 64), grpc.StatusCode.NOT_FOUND),
            (service.ledger.ExportBundle, pb.RunRef(artifact="qledger:nothing"), grpc.StatusCode.NOT_FOUND),
            (service.ledger.ExportBundle, pb.RunRef(run_id=runs["qaoa"], artifact=graph_sha),
             grpc.StatusCode.INVALID_ARGUMENT),
            (service.ledger.GetLineage, pb.RunRef(), grpc.StatusCode.INVALID_ARGUMENT)):
        status, _ = code_of(lambda call=call, request=request: call(request, timeout=30))
        assert status == code


def _append(app: LedgerApp, alice_principal: str, count: int) -> int:
    write_notes(app, alice_principal, count)
    return app.tree_size()


def test_follower_polls_on_sqlite_and_listens_on_postgres(store_url: str, qledger_home: Path) -> None:
    app, _ = make_ledger(store_url, qledger_home)  # no server: this follower is the only one
    runner = projection_runner(app)
    # A long poll: only NOTIFY can wake it in time on PostgreSQL; SQLite polls quickly instead.
    is_pg = app.store.is_postgres
    follower = projection_follower(app, runner, poll_seconds=60 if is_pg else 0.1).start()
    try:
        wait_for(lambda: set(follower.lag().values()) == {0})
        _append(app, "alice", 3)
        wait_for(lambda: set(follower.lag().values()) == {0}, 10)
        if not is_pg:
            return
        listener = follower._listener
        assert listener is not None
        # Drop the LISTEN connection from the server side, as a failover or an admin would.
        with psycopg.connect(_conninfo(app), autocommit=True) as admin:
            killed = admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                   "WHERE application_name = %s AND pid = %s",
                                   (LISTEN_APPLICATION_NAME, listener.info.backend_pid)).fetchall()
        assert killed == [(True,)]
        wait_for(lambda: follower.listen_failures >= 1, 10)
        _append(app, "alice", 2)
        # Reconnected and caught up well before the 60 s poll: the projection did not stop.
        wait_for(lambda: set(follower.lag().values()) == {0}, 10)
        assert follower.catch_ups >= 3 and follower._listener is not None
        assert follower._listener.info.backend_pid != listener.info.backend_pid
    finally:
        follower.stop()


def _conninfo(app: LedgerApp) -> str:
    env = app.store.env
    return f"host={env['POSTGRES_HOST']} port={env['POSTGRES_PORT']} dbname={env['POSTGRES_DBNAME']} " \
           f"user={env['POSTGRES_USER']}"


class Refusing(OperationsProjection):
    """Cannot take the entry at ``position`` (as PostgreSQL refuses a NUL in a text column)."""

    def __init__(self, position: int) -> None:
        self.position = position

    def apply(self, db: ProjectionDB, entries: Sequence[ProjectedEntry]) -> None:
        if any(e.position == self.position for e in entries):
            raise ValueError(f"cannot store entry {self.position}")
        super().apply(db, entries)


def test_an_entry_a_projection_cannot_apply_is_skipped_alone(ran: tuple[Service, dict[str, str]]) -> None:
    service, _ = ran
    app = service.app
    reference = projection_runner(app).read("operations", OperationsProjection().dump)
    bad = app.tree_size() - 5
    refusing = ProjectionRunner(app.ledger, app.source(), [Refusing(bad)], page_size=4)
    refusing.rebuild()
    assert refusing.positions()["operations"] == app.tree_size()  # it went on past the entry
    assert refusing.skipped() == [("operations", bad, f"ValueError: cannot store entry {bad}")]
    fixed = ProjectionRunner(app.ledger, app.source(), [Refusing(-1)], page_size=4)
    fixed.rebuild()  # a fixed projection, rebuilt: nothing skipped any more
    assert fixed.skipped() == []
    assert fixed.read("operations", OperationsProjection().dump) == reference


def _as_before_versions(app: LedgerApp) -> None:
    """The usage tables as a release before their columns for shots were added made them, in a
    store from before projection versions were recorded."""
    with app.ledger.write_transaction() as cursor:
        db = ProjectionDB(cursor, app.ledger, ("usage_runs",))
        db.execute("DROP TABLE {usage_runs}")
        db.execute("CREATE TABLE {usage_runs} (run_id TEXT PRIMARY KEY, project TEXT NOT NULL, "
                   "started_at TEXT)")
        db.execute("DELETE FROM {versions}")


def test_tables_of_an_older_shape_are_made_anew_and_replayed(ran: tuple[Service, dict[str, str]]) -> None:
    service, _ = ran
    runner = projection_runner(service.app)
    expected = dumps(runner)
    _as_before_versions(service.app)
    assert runner.stale() == {"usage": 1}  # lineage and operations have not changed shape
    runner.ensure_tables()  # what a server does as it starts (its role may create here)
    assert runner.stale() == {} and runner.positions()["usage"] == 0
    runner.catch_up()
    assert dumps(runner) == expected and runner.skipped() == []


@pytest.mark.postgres
def test_a_service_role_is_told_to_run_init_for_tables_of_an_older_shape(pg_store_url: str,
                                                                         qledger_home: Path) -> None:
    from qledger.ledger.admin import init_store
    from qledger.ledger.errors import StoreNotInitialisedError

    app, _ = make_ledger(pg_store_url, qledger_home)
    keys = KeyStore(qledger_home)
    init_store(app, keys, app.require_origin(), projections=projection_runner(app))
    _as_before_versions(app)
    schema = pg_store_url.split("schema=")[1]
    served = LedgerApp(pg_store_url.split("?")[0].replace("postgres@", "qledger_service@", 1)
                       + f"?schema={schema}", create_tables=False)
    try:
        with pytest.raises(StoreNotInitialisedError) as refused:
            projection_runner(served).ensure_tables()
        assert "usage (version 1, now 2)" in str(refused.value) and "qledger init" in str(refused.value)
        init_store(app, keys, app.require_origin(), projections=projection_runner(app))  # the owner's
        projection_runner(served).ensure_tables()
        assert projection_runner(served).stale() == {}
    finally:
        served.close()
        app.close()
