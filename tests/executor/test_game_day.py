"""The game day, as a suite: load with idempotent replays, kill -9 of the server during
submissions, a PostgreSQL crash and restart under load, two servers with one killed, and
random, mutated and re-signed commands to every RPC.  Bounded in count and time, loopback
only, real PostgreSQL.

After each scenario the same things hold (``assert_sound``): the ledger verifies with gapless
positions, every accepted run ended (completed, or failed with a recorded reason), no step of
any run was recorded twice, and the service answers every RPC with a status of its own making.
"""

from __future__ import annotations

import json
import random
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from uuid import UUID

import grpc
import pytest
from eventsourcing.persistence import PersistenceError
from hypothesis import given, settings
from hypothesis import strategies as st

from qledger.api import qledger_pb2 as pb
from qledger.api import qledger_pb2_grpc as pb_grpc
from qledger.governance.changes import grant_role
from qledger.ledger import dsse
from qledger.ledger.admin import CHECKPOINTER, ROOT
from qledger.ledger.app import LedgerApp
from qledger.ledger.canonical import canonical_bytes
from qledger.ledger.keys import KeyStore, SigningKey
from qledger.ledger.verify import verify
from qledger.rpc.channel import client_channel
from qledger.rpc.server import ExecutorSettings, RunningServer, start_server
from qledger.runs.commands import cancel_command, submit_command
from qledger.runs.reference_workflows import BELL
from qledger.runs.workflow import DEFAULT_PROJECT
from tests.conftest import Cluster
from tests.executor.conftest import ServiceFactory
from tests.executor.rpc.test_checkpointing import checkpoint_sizes
from tests.executor.runs.test_crash_and_scale import prepare, spawn_server, stream, wait_for

pytestmark = pytest.mark.reliability

# Statuses that mean the service failed rather than answered.
BROKEN = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN,
          grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.DATA_LOSS}
TERMINAL_KINDS = {"Completed", "Failed", "Cancelled"}
QUICK = {**BELL, "execute": {**BELL["execute"], "shots": 64}}


def kinds_of(entries: list[dict[str, Any]]) -> list[str]:
    return [str(p["event_type"]).rsplit(".", 1)[-1] for p in entries]


def ended(app: LedgerApp, run_id: str) -> bool:
    try:
        entries = stream(app, run_id)
    except PersistenceError:  # a pooled connection the database restart cut: the pool drops it
        return False
    return bool(entries) and kinds_of(entries)[-1] in TERMINAL_KINDS


def answers_every_rpc(address: str, client: SigningKey, origin: str, run_id: str) -> None:
    """One call of each RPC; each gets an answer (OK or a refusal), never a failure."""
    fresh = submit_command(client, origin, QUICK, f"probe-{uuid.uuid4()}")
    with client_channel(address) as channel:
        executor, ledger = pb_grpc.ExecutorStub(channel), pb_grpc.LedgerStub(channel)
        size = ledger.GetCheckpoint(pb.GetCheckpointRequest(), timeout=30).tree_size
        recorded = json.loads(executor.GetRun(pb.GetRunRequest(run_id=run_id), timeout=30).workflow_json)
        probe = executor.SubmitWorkflow(pb.SubmitWorkflowRequest(command=pb.SignedEnvelope(envelope=fresh)),
                                        timeout=30).run.run_id
        calls: dict[str, Callable[[], object]] = {
            "GetRun": lambda: executor.GetRun(pb.GetRunRequest(run_id=run_id), timeout=30),
            "ListRuns": lambda: executor.ListRuns(pb.ListRunsRequest(limit=5), timeout=30),
            "WatchRun": lambda: list(executor.WatchRun(pb.WatchRunRequest(run_id=run_id), timeout=60)),
            "CancelRun": lambda: executor.CancelRun(pb.CancelRunRequest(command=pb.SignedEnvelope(
                envelope=cancel_command(client, origin, probe, "game day probe"))), timeout=30),
            "RerunWorkflow": lambda: executor.RerunWorkflow(pb.RerunWorkflowRequest(
                run_id=run_id, command=pb.SignedEnvelope(envelope=submit_command(
                    client, origin, recorded, f"rerun-{uuid.uuid4()}", rerun_of=run_id))), timeout=30),
            "GetEntry": lambda: ledger.GetEntry(pb.GetEntryRequest(position=size), timeout=30),
            "StreamEntries": lambda: list(ledger.StreamEntries(pb.StreamEntriesRequest(
                from_position=1, limit=5), timeout=30)),
            "GetInclusionProof": lambda: ledger.GetInclusionProof(pb.GetInclusionProofRequest(
                position=1, tree_size=size), timeout=30),
            "GetConsistencyProof": lambda: ledger.GetConsistencyProof(pb.GetConsistencyProofRequest(
                first=1, second=size), timeout=30),
            "ExportBundle": lambda: ledger.ExportBundle(pb.RunRef(run_id=run_id), timeout=60),
            "GetLineage": lambda: ledger.GetLineage(pb.RunRef(run_id=run_id), timeout=60),
            "GetReport": lambda: ledger.GetReport(pb.GetReportRequest(run_id=run_id), timeout=60),
        }
        for name, call in calls.items():
            try:
                call()
            except grpc.RpcError as exc:
                assert exc.code() not in BROKEN, (name, exc.code(), exc.details())  # type: ignore[attr-defined]


def assert_sound(app: LedgerApp, accepted: set[str], seconds: float = 120) -> None:
    """The ledger verifies with gapless positions; every accepted run ended, none twice."""
    wait_for(lambda: all([ended(app, r) for r in accepted]), seconds)  # every one read: stale connections go
    for run_id in accepted:
        entries = stream(app, run_id)
        kinds = kinds_of(entries)
        assert kinds[0] == "Submitted" and sum(k in TERMINAL_KINDS for k in kinds) == 1, (run_id, kinds)
        assert [p["stream_version"] for p in entries] == list(range(1, len(entries) + 1))
        steps = [p["payload"]["step"] for p in entries if kinds_of([p]) == ["StepRecorded"]]
        assert len(steps) == len(set(steps)), f"a step of {run_id} was recorded twice: {steps}"
        if kinds[-1] == "Failed":
            assert entries[-1]["payload"]["error_class"] and entries[-1]["payload"]["message"]
    source = app.source()
    size = source.tree_size()
    assert [row.position for row in source.entries(1, size)] == list(range(1, size + 1))
    report = verify(source)
    assert report.ok, report


def submit_until_answered(address: Callable[[], str], command: bytes, seconds: float = 120,
                          failures: list[tuple[grpc.StatusCode, str]] | None = None) -> str:
    """Replay one signed command (the same idempotency key) until a server answers it; each
    failed try's status and message are added to ``failures``."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            with client_channel(address()) as channel:
                reply = pb_grpc.ExecutorStub(channel).SubmitWorkflow(
                    pb.SubmitWorkflowRequest(command=pb.SignedEnvelope(envelope=command)), timeout=10)
                return str(reply.run.run_id)
        except grpc.RpcError as exc:
            assert exc.code() in BROKEN | {grpc.StatusCode.RESOURCE_EXHAUSTED}, exc  # type: ignore[attr-defined]
            if failures is not None:
                failures.append((exc.code(), exc.details()))  # type: ignore[attr-defined]
            assert time.monotonic() < deadline, f"no server answered for {seconds} s: {exc}"
            time.sleep(0.1)


@pytest.fixture
def in_process(pg_store_url: str,
               qledger_home: Path) -> Iterator[tuple[LedgerApp, SigningKey, RunningServer]]:
    app, alice = prepare(pg_store_url, qledger_home)
    keys = KeyStore(qledger_home)
    running = start_server(app, keys.load("executor-1"), keys.load(CHECKPOINTER),
                           settings=ExecutorSettings(workers=2, authorize=False))
    yield app, alice, running
    running.stop()
    app.close()  # its pool ends in this thread, not in the garbage collector's


def test_load_with_idempotent_replays(in_process: tuple[LedgerApp, SigningKey, RunningServer]) -> None:
    app, alice, running = in_process
    origin = app.require_origin()
    commands = [submit_command(alice, origin, QUICK, f"load-{i}") for i in range(24)]

    def client(command: bytes) -> str:
        # As `qledger submit` does: the checkpoint first (for the origin), then the command.
        with client_channel(running.address) as channel:
            pb_grpc.LedgerStub(channel).GetCheckpoint(pb.GetCheckpointRequest(), timeout=30)
        return submit_until_answered(lambda: running.address, command, failures=failures)

    failures: list[tuple[grpc.StatusCode, str]] = []
    # Each command is sent three times, by different clients at once: one run each.
    with ThreadPoolExecutor(8) as pool:
        run_ids = list(pool.map(client, [c for c in commands for _ in range(3)]))
    assert len(set(run_ids)) == len(commands)
    assert failures == []  # no spurious UNAVAILABLE (nor anything else) under load
    sizes = checkpoint_sizes(app)
    assert len(sizes) == len(set(sizes)), "two checkpoints of one tree size"
    assert_sound(app, set(run_ids))
    submitted = Counter(n.originator_id for n in app.recorder.select_notifications(1, 100_000)
                        if n.topic.endswith("Submitted"))
    assert all(count == 1 for count in submitted.values()) and len(submitted) == len(commands)
    answers_every_rpc(running.address, alice, origin, run_ids[0])


def test_kill_9_during_submissions_loses_no_accepted_run(pg_store_url: str, qledger_home: Path) -> None:
    app, alice = prepare(pg_store_url, qledger_home)
    origin = app.require_origin()
    rng = random.Random(15)
    commands = [submit_command(alice, origin, QUICK, f"kill-{i}") for i in range(40)]
    current: dict[str, str] = {}
    process, current["address"] = spawn_server(pg_store_url, qledger_home, latency=0.0)
    accepted: set[str] = set()
    stop = threading.Event()

    def client() -> None:
        for command in commands:
            accepted.add(submit_until_answered(lambda: current["address"], command))
            time.sleep(0.05)  # submissions spread over the kills
        stop.set()

    submitter = threading.Thread(target=client)
    submitter.start()
    kills = 0
    try:
        while not stop.is_set() and kills < 4:
            time.sleep(rng.uniform(0.05, 0.6))  # a random point of some submission
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=30)
            kills += 1
            process, current["address"] = spawn_server(pg_store_url, qledger_home, latency=0.0)
        submitter.join(timeout=300)
        assert not submitter.is_alive()
        assert kills >= 2, "the submissions ended before the server was killed twice"
        assert_sound(app, accepted)
        assert len(accepted) == len(commands)
        answers_every_rpc(current["address"], alice, origin, sorted(accepted)[0])
    finally:
        process.terminate()
        process.wait(timeout=30)
        app.close()


def test_postgres_crash_and_restart_under_load(restartable_pg: Cluster, qledger_home: Path) -> None:
    app, alice = prepare(restartable_pg.url, qledger_home)
    origin = app.require_origin()
    keys = KeyStore(qledger_home)
    served = LedgerApp(restartable_pg.url + "?connect_timeout=2", create_tables=False)
    running = start_server(served, keys.load("executor-1"), keys.load(CHECKPOINTER),
                           settings=ExecutorSettings(workers=2, authorize=False, poll_seconds=0.1))
    commands = [submit_command(alice, origin, QUICK, f"pg-{i}") for i in range(40)]
    spans: list[tuple[float, float]] = []

    def paced(command: bytes) -> str:
        time.sleep(0.15)  # four clients, about 25 submissions a second: the crash falls among them
        began = time.monotonic()
        run_id = submit_until_answered(lambda: running.address, command, 180)
        spans.append((began, time.monotonic()))
        return run_id

    try:
        with ThreadPoolExecutor(4) as pool:
            pending = [pool.submit(paced, c) for c in commands]
            time.sleep(0.5)  # load is under way
            crashed = time.monotonic()
            restartable_pg.stop("immediate")  # a crash: connections cut, no shutdown checkpoint
            time.sleep(1.0)
            restartable_pg.start()  # waits until it accepts connections
            back = time.monotonic()
            run_ids = {f.result() for f in pending}
        assert len(run_ids) == len(commands)
        # Submissions were under way while the database was down (the store's retries, or the
        # client's on UNAVAILABLE, carried them over the gap).
        assert any(began < back and ended_ > crashed for began, ended_ in spans)
        assert any(began > back for began, _ in spans), "the load ended with the outage"
        assert_sound(app, run_ids, seconds=180)
        answers_every_rpc(running.address, alice, origin, sorted(run_ids)[0])
    finally:
        running.stop()
        served.close()  # before the cluster goes: pools end in this thread, not a collector's
        app.close()


def test_two_servers_one_killed_the_other_finishes_every_run(pg_store_url: str, qledger_home: Path) -> None:
    app, alice = prepare(pg_store_url, qledger_home)
    origin = app.require_origin()
    slow = {**QUICK, "execute": {**QUICK["execute"], "backend": "slow"}}
    servers = [spawn_server(pg_store_url, qledger_home, latency=0.5) for _ in range(2)]
    try:
        run_ids = {submit_until_answered(lambda i=i: servers[i % 2][1],  # type: ignore[misc]
                                         submit_command(alice, origin, slow, f"pair-{i}")) for i in range(10)}
        time.sleep(1.0)  # both are executing
        servers[0][0].send_signal(signal.SIGKILL)
        servers[0][0].wait(timeout=30)
        assert_sound(app, run_ids, seconds=180)  # the survivor takes over the killed one's leases
        assert all(kinds_of(stream(app, r))[-1] == "Completed" for r in run_ids)
        answers_every_rpc(servers[1][1], alice, origin, sorted(run_ids)[0])
    finally:
        for process, _ in servers:
            process.kill()
            process.wait(timeout=30)
        app.close()


# -- hostile input: random bytes to every RPC are in rpc/test_grpc; here, commands ---------------

def mutated(data: bytes, rng: random.Random) -> bytes:
    """A few bytes flipped, cut or inserted."""
    raw = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        choice, at = rng.random(), rng.randrange(len(raw) + 1)
        if choice < 0.5 and at < len(raw):
            raw[at] ^= 1 << rng.randrange(8)
        elif choice < 0.75:
            del raw[at:at + rng.randint(1, 8)]
        else:
            raw[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 4)))
    return bytes(raw)


JSON = st.recursive(st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1)
                    | st.floats(-1e15, 1e15) | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                 max_size=3), max_leaves=6)
# Members of each command (a Submitted entry's content; a cancel request) a mutation replaces.
SUBMIT_MEMBERS = [["payload", "workflow", "execute", "shots"], ["payload", "workflow", "name"],
                  ["payload", "workflow", "execute", "backend"], ["payload", "idempotency_key"],
                  ["payload", "nonce"], ["payload", "workflow"], ["payload", "workflow_sha256"],
                  ["timestamp"], ["stream_id"], ["principal"], ["payload", "workflow", "execute"], ["origin"],
                  ["payload"], ["stream_version"], ["payload", "rerun_of"]]
CANCEL_MEMBERS = [["run_id"], ["reason"], ["principal"], ["nonce"], ["origin"], ["command"], ["issued_at"]]


def resigned(key: SigningKey, envelope: bytes, path: list[str], value: Any) -> bytes:
    """The command with one member (at ``path``) replaced and signed again by ``key``: a valid
    signature over bad content."""
    parsed = dsse.parse(envelope)
    content = json.loads(parsed.payload)
    target = content
    for name in path[:-1]:
        target = target[name]
    target[path[-1]] = value
    return dsse.sign(canonical_bytes(content), key, parsed.payload_type).canonical


def submitted_runs(app: LedgerApp) -> set[UUID]:
    return {n.originator_id for n in app.recorder.select_notifications(1, 100_000)
            if n.topic.endswith("Submitted")}


def streams_of(app: LedgerApp, after: int) -> Counter[str]:
    """Entries after position ``after``, by the kind of stream they belong to."""
    kinds: Counter[str] = Counter()
    for row in app.source().entries(after + 1, None):
        kinds[json.loads(dsse.parse(row.state or b"").payload)["event_type"].rsplit(".", 1)[0]] += 1
    return kinds


def test_mutated_and_resigned_commands_leave_the_ledger_bounded(service_factory: ServiceFactory) -> None:
    service = service_factory(authorize=True)
    client, origin, executor = service.client, service.origin, service.executor
    grant_role(service.app, KeyStore(service.home).load(ROOT), client.principal, "submitter", DEFAULT_PROJECT)
    target = service.submit(QUICK).run.run_id  # what mutated cancels and reruns name
    # A flood of refusals from this host does not stop an identified client on it.
    signed = pb_grpc.LedgerStub(client_channel(service.running.address, signer=client))
    start = service.app.tree_size()

    def submit(body: bytes) -> object:
        return executor.SubmitWorkflow(pb.SubmitWorkflowRequest(command=pb.SignedEnvelope(envelope=body)),
                                       timeout=30)

    def rerun(body: bytes) -> object:
        return executor.RerunWorkflow(pb.RerunWorkflowRequest(run_id=target, command=pb.SignedEnvelope(
            envelope=body)), timeout=30)

    def cancel(body: bytes) -> object:
        return executor.CancelRun(pb.CancelRunRequest(command=pb.SignedEnvelope(envelope=body)), timeout=30)

    @settings(max_examples=40, deadline=None)
    @given(submit_member=st.sampled_from(SUBMIT_MEMBERS), cancel_member=st.sampled_from(CANCEL_MEMBERS),
           value=JSON, seed=st.integers(0, 2**32))
    def attempt(submit_member: list[str], cancel_member: list[str], value: Any, seed: int) -> None:
        rng = random.Random(seed)
        submitted = submit_command(client, origin, QUICK, f"fuzz-{seed}")
        replay = submit_command(client, origin, QUICK, f"fuzz-rerun-{seed}", rerun_of=target)
        cancelling = cancel_command(client, origin, target, "fuzz")
        calls = [(submit, mutated(submitted, rng)), (rerun, mutated(replay, rng)),
                 (cancel, mutated(cancelling, rng)),
                 (submit, resigned(client, submitted, submit_member, value)),
                 (rerun, resigned(client, replay, submit_member, value)),
                 (cancel, resigned(client, cancelling, cancel_member, value))]
        calls += [(call, rng.randbytes(rng.randint(0, 64))) for call in (submit, rerun, cancel)]
        audits, runs = streams_of(service.app, start), len(submitted_runs(service.app))
        for call, body in calls:
            try:
                call(body)
            except grpc.RpcError as exc:
                code = exc.code()  # type: ignore[attr-defined]
                assert code not in BROKEN, (call.__name__, code, exc.details())  # type: ignore[attr-defined]
        # A mutation that is still a valid command (a name changed and signed again) is a run
        # like any other; every other call adds at most an audit entry.
        assert len(submitted_runs(service.app)) - runs <= 2
        after = streams_of(service.app, start)
        new_audits = sum(after[k] - audits[k] for k in after if "governance" in k)
        assert new_audits <= len(calls)
        assert signed.GetCheckpoint(pb.GetCheckpointRequest(), timeout=30).tree_size >= start

    attempt()
    # The ledger gained runs and audit entries, nothing else; and it is sound.
    assert set(streams_of(service.app, start)) <= {"executor.run:Run", "executor.governance:AuditEvent",
                                                   "executor.governance:AuditSummary"}
    assert_sound(service.app, {str(r) for r in submitted_runs(service.app)})
