"""A quota holds under concurrency: submissions racing for the last free runs, on two servers
(each with its own connection to one store), are accepted only as far as the quota goes."""

from __future__ import annotations

import json
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from eventsourcing.persistence import IntegrityError

from qledger.api import qledger_pb2 as pb
from qledger.api import qledger_pb2_grpc as pb_grpc
from qledger.governance.budget_reservations import BudgetReservations, over_budget
from qledger.governance.changes import set_quota
from qledger.ledger import dsse
from qledger.ledger.admin import CHECKPOINTER, ROOT
from qledger.ledger.app import LedgerApp
from qledger.ledger.keys import KeyStore
from qledger.ledger.verify import verify
from qledger.provenance.operations import operation_rows
from qledger.provenance.projections import projection_runner
from qledger.provenance.usage import project_usage
from qledger.rpc.channel import client_channel
from qledger.rpc.server import ExecutorSettings, start_server
from qledger.runs.commands import cancel_command, submit_command
from qledger.runs.reference_workflows import BELL, load
from qledger.runs.shots import reserved_shots
from qledger.runs.workflow import DEFAULT_PROJECT
from tests.executor.conftest import ServiceFactory, step_records
from tests.executor.ops.test_metrics import scrape
from tests.executor.rpc.conftest import audit_entries
from tests.ledger.helpers import write_notes

QUOTA_RUNS, SUBMISSIONS = 5, 20


@pytest.mark.reliability
def test_concurrent_submissions_on_two_servers_never_overrun_a_run_quota(
        service_factory: ServiceFactory, store_url: str, qledger_home: Path) -> None:
    first = service_factory(workers=1)
    keys = KeyStore(qledger_home)
    set_quota(first.app, keys.load(ROOT), DEFAULT_PROJECT, shots=None, runs=QUOTA_RUNS,
              executor_seconds=None, warn_at=0.9)
    # A second server with its own store connection: its appends race the first's in the database.
    other_app = LedgerApp(store_url, create_tables=False)
    second = start_server(other_app, keys.load("executor-1"), keys.load(CHECKPOINTER),
                          settings=ExecutorSettings(workers=1, authorize=False))
    channels = [first.channel, client_channel(second.address)]
    stubs = [pb_grpc.ExecutorStub(channel) for channel in channels]
    commands = [submit_command(first.client, first.origin, BELL, str(uuid.uuid4()))
                for _ in range(SUBMISSIONS)]

    def submit(i: int) -> grpc.StatusCode:
        request = pb.SubmitWorkflowRequest(command=pb.SignedEnvelope(envelope=commands[i]))
        try:
            stubs[i % 2].SubmitWorkflow(request, timeout=60)
        except grpc.RpcError as exc:
            return exc.code()  # type: ignore[attr-defined, no-any-return]
        return grpc.StatusCode.OK

    try:
        with ThreadPoolExecutor(SUBMISSIONS) as pool:
            codes = list(pool.map(submit, range(SUBMISSIONS)))
        assert codes.count(grpc.StatusCode.OK) == QUOTA_RUNS, codes
        assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == SUBMISSIONS - QUOTA_RUNS, codes
        submitted = [n for n in first.app.recorder.select_notifications(1, 10_000)
                     if n.topic.endswith("Submitted")]
        assert len(submitted) == QUOTA_RUNS
        refusals = [e for e in audit_entries(first) if e["payload"]["kind"] == "budget_refused"]
        assert len(refusals) == SUBMISSIONS - QUOTA_RUNS
        assert BudgetReservations(first.app).reserved(DEFAULT_PROJECT) == {
            "runs": QUOTA_RUNS, "shots": QUOTA_RUNS * BELL["execute"]["shots"]}
        assert verify(first.app.source()).ok
    finally:
        channels[1].close()
        second.stop()
        other_app.close()  # its pool's threads end here, not in a garbage collector's thread


def test_a_reservation_starts_from_the_projected_usage_and_a_dropped_quota_forgets_it(
        service_factory: ServiceFactory) -> None:
    service = service_factory()
    reservations = BudgetReservations(service.app)
    quota = {"runs": 3, "shots": None, "executor_seconds": None, "warn_at": 0.9}

    def append_with(quota_: dict[str, object] | None, used_runs: int) -> None:
        reservations.reserve_with_next_append("p", 100, quota_, {"runs": used_runs, "shots": 7})
        write_notes(service.app, service.client.principal, 1)  # the next append, in this thread

    append_with(quota, 2)  # the projection counted two runs before any reservation existed
    assert reservations.reserved("p") == {"runs": 3, "shots": 107}
    size = service.app.tree_size()
    with pytest.raises(IntegrityError) as refused:
        append_with(quota, 0)  # the row, not the (stale) projection, decides from now on
    assert over_budget(refused.value) and service.app.tree_size() == size  # the entry went with it
    assert reservations.reserved("p") == {"runs": 3, "shots": 107}
    append_with(None, 0)
    assert reservations.reserved("p") is None


def test_an_ended_run_settles_its_reservation_to_the_shots_it_took_and_every_view_agrees(
        service_factory: ServiceFactory, qledger_home: Path) -> None:
    """quota show, qledger ops and qledger_shots_total count one thing: the shots taken, every
    optimiser evaluation included; what a run reserved beyond that is given back when it ends."""
    service = service_factory(metrics_port=0)
    set_quota(service.app, KeyStore(qledger_home).load(ROOT), DEFAULT_PROJECT, shots=10**7, runs=None,
              executor_seconds=None, warn_at=0.99)
    workflow = load("qaoa_maxcut")
    workflow["optimizer"]["maxiter"] = 4
    run_id = service.submit(workflow).run.run_id
    records = step_records([json.loads(dsse.parse(e.envelope).payload) for e in service.watch(run_id)])
    shots = workflow["execute"]["shots"]
    loop = records["hybrid_optimisation"]["shots_taken"]
    assert loop == len(records["hybrid_optimisation"]["iterations"]) * shots == 4 * shots
    taken = loop + records["execution"]["shots_taken"]
    assert taken == 5 * shots < reserved_shots(workflow)  # reserved: the limit, plus the final run
    assert BudgetReservations(service.app).reserved(DEFAULT_PROJECT) == {"runs": 1, "shots": taken}
    runner = projection_runner(service.app)
    runner.catch_up()
    assert runner.read("usage", lambda db: project_usage(db, DEFAULT_PROJECT))["shots"] == taken
    assert [r["shots"] for r in runner.read("operations", operation_rows)] == [taken]
    port = service.running.metrics_port
    assert port and scrape(port)[("qledger_shots_total", (("backend", "aer_ideal"),))] == taken


def test_a_run_cancelled_before_it_starts_gives_its_reservation_back(
        service_factory: ServiceFactory, qledger_home: Path) -> None:
    service = service_factory(workers=0)  # nothing takes the run: it is cancelled while queued
    set_quota(service.app, KeyStore(qledger_home).load(ROOT), DEFAULT_PROJECT, shots=10**7, runs=None,
              executor_seconds=None, warn_at=0.99)
    run_id = service.submit(BELL).run.run_id
    reservations = BudgetReservations(service.app)
    assert reservations.reserved(DEFAULT_PROJECT) == {"runs": 1, "shots": BELL["execute"]["shots"]}
    service.executor.CancelRun(pb.CancelRunRequest(command=pb.SignedEnvelope(
        envelope=cancel_command(service.client, service.origin, run_id, "not needed"))), timeout=30)
    assert service.run(run_id).status == "cancelled"
    assert reservations.reserved(DEFAULT_PROJECT) == {"runs": 1, "shots": 0}
    runner = projection_runner(service.app)
    runner.catch_up(["usage"])
    assert runner.read("usage", lambda db: project_usage(db, DEFAULT_PROJECT))["shots"] == 0
