"""Executors as separate processes: kill -9 mid-run and restart; two executors on one store,
sharing runs and sharing the chunks of one sweep, one of them killed mid-sweep."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from qledger.api import qledger_pb2 as pb
from qledger.api import qledger_pb2_grpc as pb_grpc
from qledger.ledger import dsse
from qledger.ledger.app import LedgerApp
from qledger.ledger.keys import KeyStore, SigningKey
from qledger.ledger.verify import verify
from qledger.rpc.channel import client_channel
from qledger.runs.commands import submit_command
from qledger.runs.reference_workflows import BELL, load
from tests.executor.conftest import RUN_KINDS, STEPS
from tests.ledger.helpers import make_ledger

REPO = Path(__file__).resolve().parents[3]
SLOW = {**BELL, "execute": {**BELL["execute"], "backend": "slow"}}


def prepare(store_url: str, home: Path) -> tuple[LedgerApp, SigningKey]:
    app, alice = make_ledger(store_url, home)
    executor_key = KeyStore(home).load_or_create("executor-1")
    app.register_key("root", "executor-1", executor_key.public, "executor")
    return app, alice


def spawn_server(store_url: str, home: Path, latency: float) -> tuple[subprocess.Popen[str], str]:
    process, address, _ = spawn_named_server(store_url, home, latency)
    return process, address


TERMINAL_KINDS = {"Completed", "Failed", "Cancelled"}


def spawn_named_server(store_url: str, home: Path, latency: float) -> tuple[subprocess.Popen[str], str, str]:
    """A server process, its address and its worker's name."""
    process = subprocess.Popen([sys.executable, "-m", "tests.executor.runs.server_process", store_url,
                                str(home), str(latency)], cwd=REPO, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                               env={**os.environ, "PYTHONPATH": str(REPO)})
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line.startswith("port "), line
    return process, f"127.0.0.1:{line.split()[1]}", line.split()[3]


def stream(app: LedgerApp, run_id: str) -> list[dict[str, Any]]:
    from uuid import UUID

    rows = app.source().stream_entries(UUID(run_id), 0)  # type: ignore[attr-defined]
    return [json.loads(dsse.parse(r.state).payload) for r in rows]


def wait_for(predicate: Any, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.mark.reliability
def test_kill_9_mid_run_then_restart_resumes(store_url: str, qledger_home: Path) -> None:
    app, alice = prepare(store_url, qledger_home)
    first, address = spawn_server(store_url, qledger_home, latency=30.0)
    try:
        with client_channel(address) as channel:
            stub = pb_grpc.ExecutorStub(channel)
            command = submit_command(alice, app.require_origin(), SLOW, "crash-1")
            run_id = stub.SubmitWorkflow(pb.SubmitWorkflowRequest(
                command=pb.SignedEnvelope(envelope=command)), timeout=30).run.run_id
        # Data preparation, synthesis and transpilation are recorded; execution sleeps in the
        # slow backend.
        wait_for(lambda: len(stream(app, run_id)) >= 4, 60)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    assert [p["stream_version"] for p in stream(app, run_id)] == [1, 2, 3, 4]
    second, address = spawn_server(store_url, qledger_home, latency=0.0)
    try:
        wait_for(lambda: stream(app, run_id)[-1]["event_type"].endswith("Completed"), 90)
    finally:
        second.terminate()
        second.wait(timeout=30)
    entries = stream(app, run_id)
    steps = [p["payload"]["step"] for p in entries if p["event_type"].endswith("StepRecorded")]
    assert steps == STEPS  # none lost, none twice
    assert [p["stream_version"] for p in entries] == list(range(1, 9))
    assert verify(app.source()).ok


@pytest.mark.reliability
def test_two_executor_processes_share_one_store(pg_store_url: str, qledger_home: Path) -> None:
    app, alice = prepare(pg_store_url, qledger_home)
    servers = [spawn_server(pg_store_url, qledger_home, latency=0.3) for _ in range(2)]
    try:
        run_ids = []
        for i in range(8):
            _, address = servers[i % 2]
            with client_channel(address) as channel:
                command = submit_command(alice, app.require_origin(), SLOW, f"shared-{i}")
                reply = pb_grpc.ExecutorStub(channel).SubmitWorkflow(pb.SubmitWorkflowRequest(
                    command=pb.SignedEnvelope(envelope=command)), timeout=30)
                run_ids.append(reply.run.run_id)
        wait_for(lambda: all(stream(app, r)[-1]["event_type"].endswith("Completed") for r in run_ids), 120)
    finally:
        for process, _ in servers:
            process.terminate()
            process.wait(timeout=30)
    workers = Counter()
    for run_id in run_ids:
        entries = stream(app, run_id)
        kinds = [p["event_type"].rsplit(".", 1)[-1] for p in entries]
        assert kinds == RUN_KINDS  # executed exactly once
        workers[entries[-1]["payload"]["summary"]["worker"]] += 1
    assert len(workers) >= 2, f"one executor did all the work: {workers}"
    assert verify(app.source()).ok


@pytest.mark.reliability
def test_two_executor_processes_share_one_sweep_and_survive_a_kill(pg_store_url: str,
                                                                    qledger_home: Path) -> None:
    from uuid import UUID

    from qledger.ledger.store.artifacts import HotArtifacts
    from qledger.runs.pubs import CHUNK
    from qledger.runs.queue import RunQueue
    from tests.executor.runs.test_pubs import assert_chunk_is_aer_samplers, transpiled

    app, alice = prepare(pg_store_url, qledger_home)
    values = [[0.01 * i, 0.02 * i] for i in range(16 * CHUNK)]  # 16 chunks, 0.3 s each
    workflow = json.loads(json.dumps(load("sweep_qasm3")))
    workflow["execute"] |= {"backend": "slow", "pubs": [{"parameter_values": values, "shots": 128}]}
    servers = {name: (process, address) for process, address, name in
               (spawn_named_server(pg_store_url, qledger_home, latency=0.3) for _ in range(2))}
    try:
        process, address = next(iter(servers.values()))
        with client_channel(address) as channel:
            command = submit_command(alice, app.require_origin(), workflow, "sweep-shared")
            run_id = pb_grpc.ExecutorStub(channel).SubmitWorkflow(pb.SubmitWorkflowRequest(
                command=pb.SignedEnvelope(envelope=command)), timeout=30).run.run_id

        def results() -> list[dict[str, Any]]:
            return [p["payload"]["record"] for p in stream(app, run_id)
                    if p["payload"].get("record", {}).get("kind") == "pub_result"]

        wait_for(lambda: len(results()) >= 4, 180)
        computed_by = {r["computed_by"] for r in results()}
        # Kill -9 the executor that holds the run: the other takes it over when the lease ends.
        coordinator = RunQueue(app).holder(UUID(run_id))
        assert coordinator in servers
        killed, _ = servers.pop(coordinator)
        killed.send_signal(signal.SIGKILL)
        killed.wait(timeout=30)
        wait_for(lambda: stream(app, run_id)[-1]["event_type"].rsplit(".", 1)[-1] in TERMINAL_KINDS, 180)
        last = stream(app, run_id)[-1]
        assert last["event_type"].endswith("Completed"), last["payload"]
    finally:
        for process, _ in servers.values():
            process.terminate()
            process.wait(timeout=30)
    records = results()
    # Every chunk recorded once, in order, and the stream has no gap: nothing lost, nothing twice.
    assert [r["bindings"] for r in records] == [[s, s + CHUNK] for s in range(0, 16 * CHUNK, CHUNK)]
    entries = stream(app, run_id)
    assert [p["stream_version"] for p in entries] == list(range(1, len(entries) + 1))
    computed_by |= {r["computed_by"] for r in records}
    assert coordinator in computed_by and len(computed_by) == 2, computed_by  # both computed chunks
    circuit = transpiled(workflow, "sampler")
    hot = HotArtifacts(app.ledger)
    for record in records[:: 5]:  # whoever computed it, a chunk is what Aer's SamplerV2 gives
        assert_chunk_is_aer_samplers(hot, record, circuit, values, 128)
    assert verify(app.source()).ok
