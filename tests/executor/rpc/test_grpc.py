"""The executor over a real loopback socket with the generated client, on both stores."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qledger.api import qledger_pb2 as pb
from qledger.ledger import dsse, merkle
from qledger.ledger.canonical import canonical_bytes
from qledger.ledger.content import EntryContent
from qledger.ledger.keys import SigningKey
from qledger.ledger.verify import verify
from qledger.rpc.server import PlaintextRefusedError, start_server
from qledger.rpc.status import field_violations
from qledger.runs.commands import submit_command
from qledger.runs.reference_workflows import BELL, GHZ_NOISY
from tests.conftest import ONLY_SQLITE
from tests.executor.conftest import RUN_KINDS, STEPS, Service, step_records
from tests.ledger.helpers import make_ledger


def code_of(call: Any) -> tuple[grpc.StatusCode, list[str]]:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    error = caught.value
    return error.code(), field_violations(error)  # type: ignore[attr-defined]


def on_backend(definition: dict[str, Any], backend: str) -> dict[str, Any]:
    noise_seed = 42 if backend == "aer_noisy" else None
    return {**definition, "execute": {**definition["execute"], "backend": backend, "noise_seed": noise_seed}}


@ONLY_SQLITE  # the store is tested elsewhere; here, the workflows (time budget)
@pytest.mark.parametrize("backend", ["aer_ideal", "aer_noisy"])
@pytest.mark.parametrize("name", ["bell", "ghz_noisy", "qaoa_maxcut"])
def test_every_reference_workflow_on_ideal_and_noisy_aer(service: Service, name: str, backend: str) -> None:
    from qledger.runs.reference_workflows import load

    reply = service.submit(on_backend(load(name), backend))
    entries = service.watch(reply.run.run_id)
    assert entries[-1].event_type.endswith("Run.Completed")
    records = step_records([json.loads(dsse.parse(e.envelope).payload) for e in entries])
    execution = records["execution"]
    assert execution["backend"]["name"] == backend
    assert (execution["backend"]["noise_model"] is None) == (backend == "aer_ideal")
    assert sum(execution["counts"].values()) == execution["shots"]
    assert records["report"]["classical_baseline"]
    assert verify(service.app.source()).ok


@pytest.mark.parametrize("workflow", [BELL, GHZ_NOISY], ids=["bell-ideal", "ghz-noisy"])
def test_submit_watch_complete(service: Service, workflow: dict[str, Any]) -> None:
    reply = service.submit(workflow)
    assert reply.created and reply.run.status in ("submitted", "running", "completed")
    entries = service.watch(reply.run.run_id)
    kinds = [e.event_type.rsplit(".", 1)[-1] for e in entries]
    assert kinds == RUN_KINDS
    assert [e.stream_version for e in entries] == list(range(1, 9))
    assert all(e.leaf_hash == merkle.leaf_hash(e.envelope) for e in entries)
    signers = [EntryContent.from_bytes(dsse.parse(e.envelope).payload).principal for e in entries]
    assert signers == ["alice"] + ["executor-1"] * 7
    records = step_records([json.loads(dsse.parse(e.envelope).payload) for e in entries])
    assert list(records) == STEPS
    execution = records["execution"]
    assert execution["shots"] == workflow["execute"]["shots"]
    assert sum(execution["counts"].values()) == workflow["execute"]["shots"]
    assert execution["environment"]["qiskit_aer"]
    if workflow is GHZ_NOISY:
        assert execution["backend"]["noise_model"]["seed"] == 42
        assert len(execution["counts"]) > 2  # noise puts shots outside |0000> and |1111>
    run = service.executor.GetRun(pb.GetRunRequest(run_id=reply.run.run_id))
    assert run.status == "completed" and list(run.steps) == STEPS
    # Resuming the watch from a version returns only what came after it.
    assert [e.stream_version for e in service.watch(reply.run.run_id, after=5)] == [6, 7, 8]
    assert service.watch(reply.run.run_id, after=8) == []  # ended: nothing to wait for
    resumed = service.executor.WatchRun(pb.WatchRunRequest(run_id=reply.run.run_id,
                                                           after_position=entries[4].position))
    assert [e.position for e in resumed] == [e.position for e in entries[5:]]
    assert verify(service.app.source()).ok


def test_same_workflow_same_seeds_identical_results(service: Service) -> None:
    records = []
    for _ in range(2):
        reply = service.submit(BELL)
        entries = service.watch(reply.run.run_id)
        records.append(step_records([json.loads(dsse.parse(e.envelope).payload) for e in entries]))
    assert records[0]["execution"]["counts"] == records[1]["execution"]["counts"]
    assert records[0]["transpilation"]["qasm3_sha256"] == records[1]["transpilation"]["qasm3_sha256"]


@pytest.mark.reliability
def test_idempotency(service: Service) -> None:
    first = service.submit(BELL, key="nightly-42")
    service.watch(first.run.run_id)
    size = service.app.tree_size()
    again = service.submit(BELL, key="nightly-42")
    assert (again.run.run_id, again.created) == (first.run.run_id, False)
    # A replay of the very same signed command runs nothing twice either.
    command = submit_command(service.client, service.origin, BELL, "nightly-43", nonce="n1")
    replayed = [service.submit_raw(command) for _ in range(2)]
    assert [r.created for r in replayed] == [True, False]
    service.watch(replayed[0].run.run_id)
    assert service.app.tree_size() == size + len(RUN_KINDS)
    other = {**BELL, "execute": {**BELL["execute"], "shots": 100}}
    code, fields = code_of(lambda: service.submit(other, key="nightly-42"))
    assert code == grpc.StatusCode.ALREADY_EXISTS and fields == ["idempotency_key"]
    assert service.app.tree_size() == size + len(RUN_KINDS)


@pytest.mark.reliability
def test_signature_rejection_leaves_ledger_intact(service: Service) -> None:
    size = service.app.tree_size()
    stranger = SigningKey.generate("alice")  # claims alice, key never registered
    assert code_of(lambda: service.submit(BELL, signer=stranger))[0] == grpc.StatusCode.UNAUTHENTICATED
    good = json.loads(submit_command(service.client, service.origin, BELL, "k1"))
    good["signatures"][0]["sig"] = json.loads(submit_command(stranger, service.origin, BELL, "k1"))[
        "signatures"][0]["sig"]
    forged = canonical_bytes(good)
    assert code_of(lambda: service.submit_raw(forged))[0] == grpc.StatusCode.UNAUTHENTICATED
    assert service.app.tree_size() == size and verify(service.app.source()).ok


def test_bad_input_gets_its_status_and_field(service: Service) -> None:
    size = service.app.tree_size()
    bad_template = {**BELL, "circuit": {"template": "teleport", "qubits": 2}}
    no_shots = {**BELL, "execute": {**BELL["execute"], "shots": 0}}
    unseeded = {**BELL, "transpile": {"optimization_level": 1}}
    cases = [
        (lambda: service.submit_raw(b""), grpc.StatusCode.INVALID_ARGUMENT, ["command.envelope"]),
        (lambda: service.submit_raw(b"{not json"), grpc.StatusCode.INVALID_ARGUMENT,
         ["command.envelope"]),
        (lambda: service.submit(bad_template), grpc.StatusCode.INVALID_ARGUMENT,
         ["workflow.circuit.template"]),
        (lambda: service.submit(no_shots), grpc.StatusCode.INVALID_ARGUMENT, ["workflow.execute.shots"]),
        (lambda: service.submit(unseeded), grpc.StatusCode.INVALID_ARGUMENT,
         ["workflow.transpile.seed_transpiler"]),
        (lambda: service.executor.GetRun(pb.GetRunRequest(run_id="nope")),
         grpc.StatusCode.INVALID_ARGUMENT, ["run_id"]),
        (lambda: service.executor.GetRun(pb.GetRunRequest(run_id=str(uuid.uuid4()))),
         grpc.StatusCode.NOT_FOUND, ["run_id"]),
        (lambda: service.ledger.GetEntry(pb.GetEntryRequest(position=10_000)),
         grpc.StatusCode.NOT_FOUND, ["position"]),
        (lambda: service.ledger.GetInclusionProof(pb.GetInclusionProofRequest(position=10_000)),
         grpc.StatusCode.OUT_OF_RANGE, ["position"]),
        (lambda: service.submit_raw(b"x" * (3 * 1024 * 1024)), grpc.StatusCode.RESOURCE_EXHAUSTED, []),
    ]
    for call, code, fields in cases:
        assert code_of(call) == (code, fields)
    # A command for another ledger is refused too.
    foreign = submit_command(service.client, "elsewhere/ledger", BELL, "k2")
    assert code_of(lambda: service.submit_raw(foreign))[0] == grpc.StatusCode.INVALID_ARGUMENT
    assert service.app.tree_size() == size and verify(service.app.source()).ok


def test_ledger_service_entries_checkpoint_and_proofs(service: Service) -> None:
    service.watch(service.submit(BELL).run.run_id)
    checkpoint = service.ledger.GetCheckpoint(pb.GetCheckpointRequest())
    entries = list(service.ledger.StreamEntries(pb.StreamEntriesRequest(from_position=1)))
    assert [e.position for e in entries] == list(range(1, checkpoint.tree_size + 1))
    leaves = [merkle.leaf_hash(e.envelope) for e in entries]
    assert merkle.root_of(leaves) == checkpoint.root_hash
    for position in (1, 3, checkpoint.tree_size):
        proof = service.ledger.GetInclusionProof(pb.GetInclusionProofRequest(position=position))
        assert merkle.verify_inclusion(proof.leaf_index, proof.tree_size, leaves[position - 1],
                                       list(proof.path), checkpoint.root_hash)
    # Several at once, in one tree (an older one here), in the order asked for.
    older = checkpoint.tree_size - 1
    asked = [older, 1, 3, 1]
    batch = service.ledger.GetInclusionProofs(pb.GetInclusionProofsRequest(positions=asked, tree_size=older))
    assert [p.leaf_index + 1 for p in batch.proofs] == asked
    for position, proof in zip(asked, batch.proofs, strict=True):
        assert proof.tree_size == older and proof.leaf_hash == leaves[position - 1]
        assert merkle.verify_inclusion(proof.leaf_index, older, leaves[position - 1], list(proof.path),
                                       merkle.root_of(leaves[:older]))
    invalid, outside = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OUT_OF_RANGE
    beyond = checkpoint.tree_size + 1
    for positions, size, refused in (([], 0, (invalid, ["positions"])),
                                     ([1] * 1001, 0, (invalid, ["positions"])),
                                     ([1, beyond], 0, (outside, ["positions"])),
                                     ([1], beyond, (outside, ["tree_size"])),
                                     ([1], -1, (outside, ["tree_size"]))):
        assert code_of(lambda p=positions, s=size: service.ledger.GetInclusionProofs(  # type: ignore[misc]
            pb.GetInclusionProofsRequest(positions=p, tree_size=s))) == refused
    assert code_of(lambda: service.ledger.GetInclusionProof(pb.GetInclusionProofRequest(
        position=1, tree_size=beyond))) == (outside, ["tree_size"])
    consistency = service.ledger.GetConsistencyProof(
        pb.GetConsistencyProofRequest(first=3, second=checkpoint.tree_size))
    assert merkle.verify_consistency(3, checkpoint.tree_size, merkle.root_of(leaves[:3]),
                                     checkpoint.root_hash, list(consistency.path))
    assert len(list(service.ledger.StreamEntries(pb.StreamEntriesRequest(from_position=2, limit=3)))) == 3


def test_health_and_reflection(service: Service) -> None:
    health = health_pb2_grpc.HealthStub(service.channel)
    for name in ("", "qledger.v1.Executor", "qledger.v1.Ledger"):
        reply = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    stub = reflection_pb2_grpc.ServerReflectionStub(service.channel)
    responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = {s.name for r in responses for s in r.list_services_response.service}
    assert {"qledger.v1.Executor", "qledger.v1.Ledger", "grpc.health.v1.Health"} <= names


def test_plaintext_only_on_loopback(sqlite_store_url: str, qledger_home: Path) -> None:
    app, _ = make_ledger(sqlite_store_url, qledger_home)
    with pytest.raises(PlaintextRefusedError):
        start_server(app, SigningKey.generate("executor-1"), None, listen="0.0.0.0:0")


def test_qaoa_maxcut_hybrid_loop_against_brute_force(service: Service) -> None:
    from qledger.runs.reference_workflows import load

    reply = service.submit(load("qaoa_maxcut"))
    entries = service.watch(reply.run.run_id)
    records = step_records([json.loads(dsse.parse(e.envelope).payload) for e in entries])
    assert list(records) == ["data_preparation", "circuit_synthesis", "transpilation",
                             "hybrid_optimisation", "execution", "post_processing", "report"]
    graph = records["data_preparation"]["datasets"]["graph"]
    assert len(graph["sha256"]) == 64  # the input dataset, recorded by content hash
    loop = records["hybrid_optimisation"]
    assert loop["evaluations"] == len(loop["iterations"]) > 5
    report = records["report"]
    assert report["classical_baseline"]["max_cut"] == 5
    assert report["most_likely"] in report["classical_baseline"]["optimal_assignments"]
    assert 0.7 < report["approximation_ratio"] <= 1.0
    # The first proposal is the workflow's recorded starting point.
    assert loop["iterations"][0]["parameters"] == [0.8, 0.4]


def every_method() -> list[tuple[str, bool]]:
    """(full method path, whether it streams responses) of every qledger RPC."""
    return [(f"/{service.full_name}/{method.name}", method.server_streaming)
            for service in pb.DESCRIPTOR.services_by_name.values() for method in service.methods]


def raw_call(channel: grpc.Channel, method: str, streaming: bool, body: bytes) -> grpc.RpcError | None:
    """Send ``body`` as the request, bytes exactly as given; the error it got, if any."""
    def identity(data: bytes) -> bytes:
        return data

    try:
        if streaming:
            list(channel.unary_stream(method, request_serializer=identity,
                                      response_deserializer=identity)(body, timeout=10))
        else:
            channel.unary_unary(method, request_serializer=identity, response_deserializer=identity)(
                body, timeout=10)
    except grpc.RpcError as error:
        return error
    return None


@pytest.mark.reliability
def test_a_body_that_is_not_the_request_message_is_invalid_argument(service: Service) -> None:
    before = service.app.tree_size()
    for method, streaming in every_method():
        error = raw_call(service.channel, method, streaming, b"\xff\xff\xff")
        assert error is not None and error.code() == grpc.StatusCode.INVALID_ARGUMENT, method  # type: ignore[attr-defined]
        assert field_violations(error) == ["request"], method
    assert service.app.tree_size() == before


@pytest.mark.reliability
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.binary(max_size=64), index=st.integers(min_value=0))
def test_random_bytes_to_any_rpc_never_hurt_the_server(service: Service, body: bytes, index: int) -> None:
    methods = every_method()
    method, streaming = methods[index % len(methods)]
    before = service.app.tree_size()
    error = raw_call(service.channel, method, streaming, body)
    code = None if error is None else error.code()  # type: ignore[attr-defined]
    assert code not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), (method, body, error)
    assert service.app.tree_size() - before <= 1  # at most an on-demand checkpoint
    assert service.executor.ListRuns(pb.ListRunsRequest(), timeout=10) is not None  # still serving
