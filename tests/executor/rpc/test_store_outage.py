"""When PostgreSQL refuses the service, RPCs answer UNAVAILABLE and nothing half-written remains."""

from __future__ import annotations

import uuid
from pathlib import Path

import grpc
import psycopg
import pytest

from qledger.api import qledger_pb2 as pb
from qledger.api import qledger_pb2_grpc as pb_grpc
from qledger.ledger.admin import CHECKPOINTER
from qledger.ledger.app import LedgerApp
from qledger.ledger.keys import KeyStore
from qledger.ledger.verify import verify
from qledger.rpc.channel import client_channel
from qledger.rpc.server import ExecutorSettings, start_server
from qledger.runs.commands import submit_command
from qledger.runs.reference_workflows import BELL
from tests.ledger.helpers import make_ledger


@pytest.mark.reliability
def test_store_down_is_unavailable(pg_store_url: str, qledger_home: Path) -> None:
    admin_app, alice = make_ledger(pg_store_url, qledger_home)
    keys = KeyStore(qledger_home)
    executor_key = keys.load_or_create("executor-1")
    admin_app.register_key("root", "executor-1", executor_key.public, "executor")
    server_url = pg_store_url.split("?")[0]
    role = f"qledger_outage_{uuid.uuid4().hex[:8]}"
    schema = pg_store_url.split("schema=")[1]
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN")
        conn.execute(f'GRANT ALL ON SCHEMA "{schema}" TO {role}')
        conn.execute(f'GRANT ALL ON ALL TABLES IN SCHEMA "{schema}" TO {role}')
        conn.execute(f'GRANT ALL ON ALL SEQUENCES IN SCHEMA "{schema}" TO {role}')
    service_url = server_url.replace("postgres@", f"{role}@", 1) + f"?schema={schema}&connect_timeout=1"
    app = LedgerApp(service_url, create_tables=False)
    # The outage is what is tested: calls come from nobody, so authorisation is off here.
    running = start_server(app, executor_key, keys.load(CHECKPOINTER),
                           settings=ExecutorSettings(authorize=False))
    try:
        with client_channel(running.address) as channel:
            stub = pb_grpc.ExecutorStub(channel)
            ledger = pb_grpc.LedgerStub(channel)
            assert ledger.GetEntry(pb.GetEntryRequest(position=1), timeout=10).position == 1
            with psycopg.connect(server_url, autocommit=True) as conn:
                conn.execute(f"ALTER ROLE {role} NOLOGIN")
                conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                             (role,))
            command = submit_command(alice, admin_app.require_origin(), BELL, "during-outage")
            with pytest.raises(grpc.RpcError) as caught:
                stub.SubmitWorkflow(pb.SubmitWorkflowRequest(command=pb.SignedEnvelope(envelope=command)),
                                    timeout=60)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
            assert "store unavailable" in caught.value.details()  # type: ignore[attr-defined]
            with pytest.raises(grpc.RpcError) as caught:
                ledger.GetEntry(pb.GetEntryRequest(position=1), timeout=60)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
    finally:
        running.stop(grace=0.5)
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}'")
            conn.execute(f"REASSIGN OWNED BY {role} TO CURRENT_USER")
            conn.execute(f"DROP OWNED BY {role}")
            conn.execute(f"DROP ROLE {role}")
    assert verify(admin_app.source()).ok
