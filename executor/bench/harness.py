"""What the executor benchmarks share: a fresh store, a server on loopback that authorises every
call (as in production), and a client allowed to submit to it."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qledger.api import qledger_pb2 as pb
from qledger.api import qledger_pb2_grpc as pb_grpc
from qledger.governance.changes import grant_role
from qledger.ledger.admin import CHECKPOINTER, ROOT, add_key, init_store, open_admin_app
from qledger.ledger.app import LedgerApp
from qledger.ledger.bench import _bench_store
from qledger.ledger.keys import KeyStore, SigningKey
from qledger.rpc.channel import client_channel
from qledger.rpc.server import ExecutorSettings, start_server
from qledger.runs.commands import submit_command
from qledger.runs.workflow import DEFAULT_PROJECT


@dataclass
class BenchService:
    url: str
    app: LedgerApp
    client: SigningKey
    stub: pb_grpc.ExecutorStub
    origin: str
    home: Path  # $QLEDGER_HOME of the bench: the keys of its principals
    address: str = ""  # host:port of the bench's server

    @contextmanager
    def another_executor(self) -> Iterator[subprocess.Popen[bytes]]:
        """A second executor process (``qledger serve``) on the same store, while in the block."""
        process = subprocess.Popen(
            [sys.executable, "-m", "qledger.cli", "serve", "--store", self.url, "--plaintext",
             "--listen", "127.0.0.1:0", "--workers", "1", "--log-format", "text"],
            env={**os.environ, "QLEDGER_HOME": str(self.home)}, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL)
        try:
            assert process.stdout is not None
            if not process.stdout.readline().startswith(b"serving"):
                raise RuntimeError("the second executor process did not start")
            yield process
        finally:
            process.terminate()
            process.wait(timeout=60)

    @property
    def store_kind(self) -> str:
        return "PostgreSQL" if "postgresql" in self.url else "SQLite"

    def timed_run(self, workflow: dict[str, Any], timeout: float = 120.0) -> tuple[float, str]:
        """Seconds from submitting ``workflow`` (signed beforehand) until its last entry is seen,
        and that entry's event type."""
        seconds, entries = self.timed_run_entries(workflow, timeout)
        return seconds, entries[-1].event_type if entries else ""

    def timed_run_entries(self, workflow: dict[str, Any], timeout: float = 120.0
                          ) -> tuple[float, list[pb.LedgerEntry]]:
        """The same, with the run's entries as they were watched."""
        command = submit_command(self.client, self.origin, workflow, str(uuid.uuid4()))
        t0 = time.perf_counter()
        reply = self.stub.SubmitWorkflow(pb.SubmitWorkflowRequest(
            command=pb.SignedEnvelope(envelope=command)), timeout=timeout)
        entries = list(self.stub.WatchRun(pb.WatchRunRequest(run_id=reply.run.run_id), timeout=timeout))
        return time.perf_counter() - t0, entries


@contextmanager
def bench_service(base: str | None, settings: ExecutorSettings) -> Iterator[BenchService]:
    with _bench_store(base) as url, tempfile.TemporaryDirectory() as home:
        keys = KeyStore(Path(home))
        app = open_admin_app(url, keys)
        init_store(app, keys)
        client = add_key(app, keys, "bench-client", "client")
        grant_role(app, keys.load(ROOT), "bench-client", "submitter", DEFAULT_PROJECT)
        executor_key = add_key(app, keys, "executor-1", "executor")
        running = start_server(app, executor_key, keys.load(CHECKPOINTER), settings=settings)
        try:
            with client_channel(running.address, signer=client) as channel:
                yield BenchService(url, app, client, pb_grpc.ExecutorStub(channel), app.require_origin(),
                                   Path(home), running.address)
        finally:
            running.stop()
