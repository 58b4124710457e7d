"""Failure classification, retries, failover, circuit breakers, cancellation, reruns, backpressure."""

from __future__ import annotations

import json
import time
from typing import Any
from uuid import UUID

import grpc
import pytest
from eventsourcing.persistence import StoredEvent
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from qledger.api import qledger_pb2 as pb
from qledger.cli import app as cli
from qledger.ledger import dsse
from qledger.ledger.content import EntryContent
from qledger.ledger.keys import KeyStore, SigningKey
from qledger.ledger.verify import verify
from qledger.provenance.projections import projection_runner
from qledger.rpc.status import retry_delay
from qledger.runs.backends import BackendCatalog, FaultConfig
from qledger.runs.breaker import BackendBreaker
from qledger.runs.commands import cancel_command, submit_command
from qledger.runs.pipeline import RetryPolicy
from qledger.runs.queue import RunQueue
from qledger.runs.reference_workflows import BELL
from qledger.runs.run import run_id_for
from tests.executor.conftest import Service, ServiceFactory, step_records
from tests.executor.rpc.test_grpc import code_of, field_violations

FAST_RETRY = RetryPolicy(attempts=3, initial_wait=0.01, max_wait=0.05)


def workflow(backend: str, fallback: str | None = None, priority: str = "normal") -> dict[str, Any]:
    return {**BELL, "execute": {**BELL["execute"], "backend": backend, "fallback_backend": fallback,
                                "priority": priority}}


def payloads(service: Service, run_id: str) -> list[dict[str, Any]]:
    return [json.loads(dsse.parse(e.envelope).payload) for e in service.watch(run_id)]


def finished(service: Service, body: dict[str, Any]) -> tuple[pb.Run, list[dict[str, Any]]]:
    run_id = service.submit(body).run.run_id
    entries = payloads(service, run_id)
    return service.run(run_id), entries


def catalog(**backends: FaultConfig) -> BackendCatalog:
    return BackendCatalog({name: ("aer_ideal", config) for name, config in backends.items()})


def test_environmental_failures_are_retried(service_factory: ServiceFactory) -> None:
    service = service_factory(catalog(flaky=FaultConfig(failure_rate=0.5, seed=3)), retry=RetryPolicy(
        attempts=8, initial_wait=0.01, max_wait=0.05))
    run, entries = finished(service, workflow("flaky"))
    assert run.status == "completed", run.error
    execution = step_records(entries)["execution"]
    assert execution["backend"]["name"] == "flaky" and not execution["failover"]
    assert execution["attempts"], "seed 3 fails the first call: the retry must be on record"
    assert all(a["error_class"] == "BackendUnavailableError" for a in execution["attempts"])


def test_failover_to_the_fallback_backend(service_factory: ServiceFactory) -> None:
    service = service_factory(catalog(down=FaultConfig(failure_rate=1.0)), retry=FAST_RETRY)
    run, entries = finished(service, workflow("down", fallback="aer_ideal"))
    assert run.status == "completed", run.error
    execution = step_records(entries)["execution"]
    assert execution["failover"] and execution["backend"]["name"] == "aer_ideal"
    assert [a["backend"] for a in execution["attempts"]] == ["down"] * 3


def test_without_fallback_the_run_fails_with_diagnostics(service_factory: ServiceFactory) -> None:
    service = service_factory(catalog(down=FaultConfig(failure_rate=1.0)), retry=FAST_RETRY)
    run, entries = finished(service, workflow("down"))
    assert run.status == "failed" and run.error.startswith("environmental BackendUnavailableError")
    failed = entries[-1]["payload"]
    assert failed["kind"] == "environmental" and failed["step"] == "execution"
    assert "OPENQASM 3" in failed["diagnostics"]["circuit_qasm3"]
    assert failed["diagnostics"]["settings"]["execute"]["backend"] == "down"
    assert len(failed["diagnostics"]["attempts"]) == 3


def test_deterministic_failures_fail_fast(service_factory: ServiceFactory) -> None:
    rejecting = catalog(picky=FaultConfig(reject=True))
    service = service_factory(rejecting, retry=FAST_RETRY)
    run, entries = finished(service, workflow("picky", fallback="aer_ideal"))
    assert run.status == "failed" and run.error.startswith("deterministic CircuitRejectedError")
    assert rejecting.get("picky", 2, None).calls == 1  # no retry, no failover
    assert entries[-1]["payload"]["diagnostics"]["circuit_qasm3"]


def test_breaker_opens_is_recorded_and_reroutes_low_priority(service_factory: ServiceFactory) -> None:
    service = service_factory(catalog(down=FaultConfig(failure_rate=1.0)), retry=FAST_RETRY,
                              breaker_threshold=2, breaker_cooldown=60)
    run, _ = finished(service, workflow("down"))
    assert run.status == "failed"
    breaker = service.app.repository.get(BackendBreaker.create_id("down"))
    assert isinstance(breaker, BackendBreaker) and breaker.state == "open"
    # With the breaker open a low-priority run goes to the simulator; a normal one fails fast.
    run, entries = finished(service, workflow("down", priority="low"))
    assert run.status == "completed", run.error
    execution = step_records(entries)["execution"]
    assert execution["routed"].startswith("breaker for down is open")
    assert execution["backend"]["name"] == "aer_ideal"
    run, entries = finished(service, workflow("down"))
    assert run.status == "failed" and "BreakerOpenError" in run.error
    assert verify(service.app.source()).ok


def test_cancel_run(service_factory: ServiceFactory) -> None:
    service = service_factory(catalog(slow=FaultConfig(latency_seconds=1.5)))
    run_id = service.submit(workflow("slow")).run.run_id
    time.sleep(0.3)
    mallory = KeyStore(service.home).load_or_create("mallory")
    service.app.register_key("root", "mallory", mallory.public, "client")
    other = cancel_command(mallory, service.origin, run_id, "not mine")
    request = pb.CancelRunRequest(command=pb.SignedEnvelope(envelope=other))
    assert code_of(lambda: service.executor.CancelRun(request))[0] == grpc.StatusCode.PERMISSION_DENIED
    forged = cancel_command(SigningKey.generate("alice"), service.origin, run_id, "forged")
    request = pb.CancelRunRequest(command=pb.SignedEnvelope(envelope=forged))
    assert code_of(lambda: service.executor.CancelRun(request))[0] == grpc.StatusCode.UNAUTHENTICATED
    command = cancel_command(service.client, service.origin, run_id, "changed my mind")
    cancelled = service.executor.CancelRun(pb.CancelRunRequest(command=pb.SignedEnvelope(envelope=command)))
    assert cancelled.status == "cancelled"
    kinds = [p["event_type"].rsplit(".", 1)[-1] for p in payloads(service, run_id)]
    assert kinds[-1] == "Cancelled" and "Completed" not in kinds
    time.sleep(2)  # the worker finishes its step and must not record past the cancellation
    assert service.run(run_id).status == "cancelled"
    assert verify(service.app.source()).ok


def test_rerun_reproduces_the_recorded_run(service: Service) -> None:
    original_id = service.submit(BELL).run.run_id
    original = payloads(service, original_id)
    recorded = json.loads(service.run(original_id).workflow_json)
    command = submit_command(service.client, service.origin, recorded, "rerun-1", rerun_of=original_id)
    reply = service.executor.RerunWorkflow(pb.RerunWorkflowRequest(
        run_id=original_id, command=pb.SignedEnvelope(envelope=command)))
    rerun = payloads(service, reply.run.run_id)
    assert service.run(reply.run.run_id).rerun_of == original_id
    assert step_records(rerun)["execution"]["counts"] == step_records(original)["execution"]["counts"]
    changed = {**recorded, "execute": {**recorded["execute"], "shots": 10}}
    bad = submit_command(service.client, service.origin, changed, "rerun-2", rerun_of=original_id)
    request = pb.RerunWorkflowRequest(run_id=original_id, command=pb.SignedEnvelope(envelope=bad))
    assert code_of(lambda: service.executor.RerunWorkflow(request))[0] == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.reliability
def test_backpressure_is_resource_exhausted_with_retry_info(service_factory: ServiceFactory) -> None:
    service = service_factory(catalog(slow=FaultConfig(latency_seconds=1.0)), workers=1, max_pending=1)
    service.submit(workflow("slow"))
    with pytest.raises(grpc.RpcError) as caught:
        service.submit(workflow("slow"), key="second")
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
    assert retry_delay(caught.value) == 2.0
    # Refused before anything was written: the second run does not exist.
    second = str(run_id_for("alice", "second"))
    assert code_of(lambda: service.run(second))[0] == grpc.StatusCode.NOT_FOUND


def test_quality_band_takes_more_shots_then_flags(service: Service) -> None:
    from qledger.runs.reference_workflows import GHZ_NOISY

    strict = {**GHZ_NOISY, "quality": {"max_tvd": 0.01, "max_shots": 4 * GHZ_NOISY["execute"]["shots"]}}
    run, entries = finished(service, strict)
    assert run.status == "completed"
    execution, report = step_records(entries)["execution"], step_records(entries)["report"]
    assert [r["shots"] for r in execution["quality_rounds"]] == [8192, 16384]  # doubled to the budget
    assert execution["shots"] == 16384 and sum(execution["counts"].values()) == 16384
    assert report["quality"].startswith("flagged")  # noise keeps GHZ outside a 1% band
    relaxed = {**BELL, "quality": {"max_tvd": 0.05, "max_shots": 8192}}
    run, entries = finished(service, relaxed)
    assert step_records(entries)["report"]["quality"] == "within band"
    assert step_records(entries)["execution"]["quality_rounds"] == []
    assert step_records(entries)["data_preparation"]["queue_ms"] >= 0  # queue time on the first step


def submitted_entries(service: Service, run_id: str) -> int:
    return len(service.app.source().stream_entries(UUID(run_id), 0))


def refuse_queue_rows(service: Service, table: str, refuse: bool) -> None:
    if service.app.store.is_postgres:
        schema = table.rpartition(".")[0]
        function = f"{schema}.refuse_queue_rows" if schema else "refuse_queue_rows"
        statements = ([f"CREATE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS "
                       "$$ BEGIN RAISE EXCEPTION 'no queue rows'; END $$",
                       f"CREATE TRIGGER refuse BEFORE INSERT ON {table} FOR EACH ROW "
                       f"EXECUTE FUNCTION {function}()"] if refuse else
                      [f"DROP TRIGGER refuse ON {table}", f"DROP FUNCTION {function}()"])
    else:
        statements = ([f"CREATE TRIGGER refuse BEFORE INSERT ON {table} "
                       "BEGIN SELECT RAISE(ABORT, 'no queue rows'); END"] if refuse
                      else ["DROP TRIGGER refuse"])
    with service.app.ledger.datastore.transaction(commit=True) as cursor:
        for statement in statements:
            cursor.execute(statement)


@pytest.mark.reliability
def test_a_run_is_recorded_and_queued_together_or_not_at_all(service_factory: ServiceFactory) -> None:
    service = service_factory()
    queue = RunQueue(service.app)
    command = submit_command(service.client, service.origin, BELL, "atomic")
    run_id = str(run_id_for(service.client.principal, "atomic"))
    refuse_queue_rows(service, queue.table, True)  # a database error in the middle of a submission
    code, _ = code_of(lambda: service.submit_raw(command))
    assert code == grpc.StatusCode.UNAVAILABLE
    assert submitted_entries(service, run_id) == 0, "an entry was recorded without its queue row"
    refuse_queue_rows(service, queue.table, False)
    assert service.submit_raw(command).created
    assert [e.event_type.rsplit(".", 1)[-1] for e in service.watch(run_id)][-1] == "Completed"


def record_unqueued(service: Service, key: str) -> tuple[bytes, str]:
    """What a server killed between recording and queueing left behind before the two were one
    transaction: the client-signed entry, and no queue row."""
    command = submit_command(service.client, service.origin, BELL, key)
    content = EntryContent.from_bytes(dsse.parse(command).payload)
    service.app.recorder.insert_events([StoredEvent(UUID(content.stream_id), 1, content.event_type, command)])
    return command, content.stream_id


@pytest.mark.reliability
def test_an_idempotent_retry_queues_a_recorded_but_unqueued_run(service_factory: ServiceFactory) -> None:
    service = service_factory()
    command, run_id = record_unqueued(service, "left-behind")
    reply = service.submit_raw(command)
    assert not reply.created and reply.run.run_id == run_id
    assert service.watch(run_id)[-1].event_type.endswith("Completed")
    assert service.submit_raw(command).run.status == "completed"  # and never runs twice
    assert sum(e.event_type.endswith("Completed") for e in service.watch(run_id)) == 1


@pytest.mark.reliability
def test_server_start_queues_recorded_but_unqueued_runs(service_factory: ServiceFactory) -> None:
    first = service_factory()
    _, run_id = record_unqueued(first, "orphan")
    first.running.stop()
    second = service_factory()
    assert second.watch(run_id)[-1].event_type.endswith("Completed")
    assert verify(second.app.source()).ok


def signed_without(service: Service, key: str, member: str) -> bytes:
    """A validly signed Submitted command that lacks one payload member."""
    content = EntryContent.from_bytes(dsse.parse(submit_command(service.client, service.origin, BELL,
                                                                key)).payload)
    payload = {k: v for k, v in content.payload.items() if k != member}
    return dsse.sign(EntryContent(**{**content.__dict__, "payload": payload}).to_bytes(),
                     service.client).canonical


@pytest.mark.reliability
@pytest.mark.parametrize("member", ["originator_topic", "nonce"])
def test_a_malformed_signed_command_is_refused_before_anything_is_appended(
        service_factory: ServiceFactory, member: str) -> None:
    service = service_factory()
    before = service.app.tree_size()
    code, fields = code_of(lambda: service.submit_raw(signed_without(service, "poison", member)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and fields == [member]
    assert service.app.tree_size() == before
    assert service.executor.ListRuns(pb.ListRunsRequest(), timeout=10).runs == []


@pytest.mark.reliability
def test_an_entry_no_reader_can_interpret_stops_nobody(service_factory: ServiceFactory) -> None:
    """An entry recorded before commands were checked whole: readers skip it, visibly."""
    service = service_factory()
    poison = signed_without(service, "poison", "nonce")
    content = EntryContent.from_bytes(dsse.parse(poison).payload)
    RunQueue(service.app).enqueue_with_next_append(UUID(content.stream_id))
    service.app.recorder.insert_events([StoredEvent(UUID(content.stream_id), 1, content.event_type, poison)])
    service.app.ledger.discard_staged()
    good = service.submit(BELL).run.run_id
    assert service.watch(good)[-1].event_type.endswith("Completed")
    listed = service.executor.ListRuns(pb.ListRunsRequest(), timeout=10).runs
    assert [r.run_id for r in listed] == [good]
    code, _ = code_of(lambda: service.run(content.stream_id))
    assert code == grpc.StatusCode.DATA_LOSS
    deadline = time.monotonic() + 10
    while RunQueue(service.app).pending() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert RunQueue(service.app).pending() == 0, "the worker keeps retrying a run it cannot read"
    assert verify(service.app.source()).ok


def record_unchecked(service: Service, workflow: dict[str, Any], key: str) -> str:
    """An entry as it was recorded before commands were checked whole; its run id."""
    command = submit_command(service.client, service.origin, workflow, key)
    content = EntryContent.from_bytes(dsse.parse(command).payload)
    RunQueue(service.app).enqueue_with_next_append(UUID(content.stream_id))
    service.app.recorder.insert_events([StoredEvent(UUID(content.stream_id), 1, content.event_type, command)])
    service.app.ledger.discard_staged()
    return content.stream_id


@pytest.mark.reliability
def test_an_entry_a_projection_cannot_store_is_skipped_visibly(service_factory: ServiceFactory) -> None:
    """A NUL in a workflow name: PostgreSQL's text columns refuse it.  The projections skip that
    entry (and say which), and go on with everyone else's."""
    service = service_factory()
    poisoned = record_unchecked(service, {**BELL, "name": "bell\x00"}, "nul")
    position = service.app.tree_size()
    # The worker checks a definition again before it runs it: this one fails, on the record.
    assert service.watch(poisoned)[-1].event_type.endswith("Failed")
    good = service.submit(BELL).run.run_id
    assert service.watch(good)[-1].event_type.endswith("Completed")
    runner = projection_runner(service.app)
    runner.catch_up()
    assert set(runner.positions().values()) == {service.app.tree_size()}
    skipped = runner.skipped()
    if service.app.store.is_postgres:
        assert skipped and {p for _, p, _ in skipped} <= set(range(position, service.app.tree_size() + 1))
        assert all("NUL" in error for _, _, error in skipped), skipped
        status = CliRunner().invoke(cli, ["projections", "status", "--store", service.app.store.url])
        assert status.exit_code == 0, status.output
        shown = json.loads(status.output)
        assert [s["position"] for s in shown[skipped[0][0]]["skipped"]] == [
            p for n, p, _ in skipped if n == skipped[0][0]]
    lineage = json.loads(service.ledger.GetLineage(pb.RunRef(run_id=good), timeout=30).prov_json)
    assert lineage["entity"]


@pytest.mark.reliability
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.text(min_size=0, max_size=12))
def test_any_name_is_refused_by_field_or_stored_for_every_reader(service: Service, name: str) -> None:
    body = {**BELL, "name": name}
    try:
        reply = service.submit(body)
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
        assert field_violations(error) == ["workflow.name"], error.details()
        assert name == "" or any(ord(c) < 0x20 or 0x7f <= ord(c) <= 0x9f for c in name) or len(name) > 256
        return
    assert not any(ord(c) < 0x20 or 0x7f <= ord(c) <= 0x9f for c in name)
    assert reply.run.workflow == name
    runner = projection_runner(service.app)
    runner.catch_up()
    assert runner.skipped() == []
    listed = service.executor.ListRuns(pb.ListRunsRequest(), timeout=10).runs
    assert reply.run.run_id in [r.run_id for r in listed]
