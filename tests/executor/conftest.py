"""A running executor (in-process, loopback) over each store, with configurable backends."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from qledger.api import qledger_pb2 as pb
from qledger.api import qledger_pb2_grpc as pb_grpc
from qledger.ledger.admin import CHECKPOINTER, export_key
from qledger.ledger.app import LedgerApp
from qledger.ledger.keys import KeyStore, SigningKey
from qledger.rpc.channel import client_channel
from qledger.rpc.server import ExecutorSettings, RunningServer, start_server
from qledger.runs.backends import BackendCatalog
from qledger.runs.commands import submit_command
from tests.ledger.helpers import make_ledger


@dataclass
class Service:
    app: LedgerApp
    client: SigningKey
    executor: pb_grpc.ExecutorStub
    ledger: pb_grpc.LedgerStub
    channel: grpc.Channel
    origin: str
    running: RunningServer
    home: Path

    def submit(self, workflow: dict[str, Any], key: str | None = None,
               signer: SigningKey | None = None) -> pb.SubmitWorkflowResponse:
        command = submit_command(signer or self.client, self.origin, workflow, key or str(uuid.uuid4()))
        return self.submit_raw(command)

    def submit_raw(self, envelope: bytes) -> pb.SubmitWorkflowResponse:
        request = pb.SubmitWorkflowRequest(command=pb.SignedEnvelope(envelope=envelope))
        return self.executor.SubmitWorkflow(request, timeout=30)  # type: ignore[no-any-return]

    def watch(self, run_id: str, after: int = 0) -> list[pb.LedgerEntry]:
        return list(self.executor.WatchRun(pb.WatchRunRequest(run_id=run_id, after_version=after),
                                           timeout=120))

    def run(self, run_id: str) -> pb.Run:
        return self.executor.GetRun(pb.GetRunRequest(run_id=run_id), timeout=10)  # type: ignore[no-any-return]


ServiceFactory = Callable[..., Service]


@pytest.fixture
def service_factory(store_url: str, qledger_home: Path) -> Iterator[ServiceFactory]:
    app, alice = make_ledger(store_url, qledger_home)
    keys = KeyStore(qledger_home)
    executor_key = keys.load_or_create("executor-1")
    app.register_key("root", "executor-1", executor_key.public, "executor")
    started: list[tuple[grpc.Channel, RunningServer]] = []

    def make(catalog: BackendCatalog | None = None, export: bool = False, **settings: Any) -> Service:
        # Authorisation has its own tests (test_authz); elsewhere the harness calls as nobody.
        settings.setdefault("authorize", False)
        exporter = export_key(app, keys) if export else None
        running = start_server(app, executor_key, keys.load(CHECKPOINTER),
                               settings=ExecutorSettings(**settings), catalog=catalog, export_key=exporter)
        channel = client_channel(running.address)
        started.append((channel, running))
        return Service(app, alice, pb_grpc.ExecutorStub(channel), pb_grpc.LedgerStub(channel), channel,
                       app.require_origin(), running, qledger_home)

    yield make
    for channel, running in started:
        channel.close()
        running.stop()


@pytest.fixture
def service(service_factory: ServiceFactory) -> Service:
    return service_factory()


STEPS = ["data_preparation", "circuit_synthesis", "transpilation", "execution", "post_processing", "report"]
RUN_KINDS = ["Submitted"] + ["StepRecorded"] * len(STEPS) + ["Completed"]


def step_records(payloads: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Step id -> record, from a run's entry contents."""
    return {p["payload"]["step"]: p["payload"]["record"] for p in payloads
            if p["event_type"].endswith("StepRecorded")}
