"""Production shape on PostgreSQL: `qledger init` as the database owner, the server as the
least-privileged service role (INSERT and SELECT on ledger tables, no CREATE), end to end."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from typer.testing import CliRunner

from qledger.api import qledger_pb2 as pb
from qledger.api import qledger_pb2_grpc as pb_grpc
from qledger.cli import app as cli
from qledger.ledger.admin import CHECKPOINTER
from qledger.ledger.app import LedgerApp
from qledger.ledger.keys import KeyStore
from qledger.ledger.store.artifacts import HotArtifacts
from qledger.ledger.verify import verify
from qledger.rpc.channel import client_channel
from qledger.rpc.server import ExecutorSettings, start_server
from qledger.runs.commands import submit_command
from qledger.runs.reference_workflows import BELL


@pytest.fixture
def service_role(pg_store_url: str) -> Iterator[str]:
    role = f"qledger_svc_{uuid.uuid4().hex[:8]}"
    yield role
    with psycopg.connect(pg_store_url.split("?")[0], autocommit=True) as conn:
        conn.execute(f"DROP OWNED BY {role}")  # its grants; the schema goes with pg_store_url
        conn.execute(f"DROP ROLE IF EXISTS {role}")


def test_the_service_role_runs_everything_it_must_and_nothing_more(
        pg_store_url: str, service_role: str, qledger_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QLEDGER_HOME", str(qledger_home))
    runner = CliRunner()

    def admin(*args: str) -> None:
        result = runner.invoke(cli, [*args, "--store", pg_store_url])
        assert result.exit_code == 0, result.output

    admin("init", "--service-role", service_role)
    admin("init", "--service-role", service_role)  # safe to run twice
    admin("keys", "add", "executor-1", "--purpose", "executor")
    admin("keys", "add", "alice")
    admin("roles", "grant", "alice", "submitter")
    keys = KeyStore(qledger_home)
    server, schema = pg_store_url.split("?")[0], pg_store_url.split("schema=")[1]
    service_url = server.replace("postgres@", f"{service_role}@", 1) + f"?schema={schema}"
    app = LedgerApp(service_url, create_tables=False)
    running = start_server(app, keys.load("executor-1"), keys.load(CHECKPOINTER),
                           settings=ExecutorSettings(projection_poll_seconds=0.2))
    try:
        alice = keys.load("alice")
        with client_channel(running.address, signer=alice) as channel:
            stub = pb_grpc.ExecutorStub(channel)
            command = submit_command(alice, app.require_origin(), BELL, "least-privilege")
            run_id = stub.SubmitWorkflow(pb.SubmitWorkflowRequest(
                command=pb.SignedEnvelope(envelope=command)), timeout=30).run.run_id
            list(stub.WatchRun(pb.WatchRunRequest(run_id=run_id), timeout=60))
            assert stub.GetRun(pb.GetRunRequest(run_id=run_id), timeout=10).status == "completed"
        follower = running.follower
        assert follower is not None
        deadline = time.monotonic() + 20
        while set(follower.lag().values()) != {0} and time.monotonic() < deadline:
            time.sleep(0.05)
        assert set(follower.lag().values()) == {0} and follower.errors == 0
        assert HotArtifacts(app.ledger).listing(), "circuits and counts were stored"
    finally:
        running.stop()
    assert verify(app.source()).ok
    with psycopg.connect(service_url.split("?")[0]) as conn:
        for statement in (f'UPDATE "{schema}".ledger_entries SET leaf_hash = leaf_hash',
                          f'DELETE FROM "{schema}".ledger_artifacts',
                          f'CREATE TABLE "{schema}".intruder (x int)'):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
            conn.rollback()
