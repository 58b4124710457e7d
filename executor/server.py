"""Assembling the gRPC server: services, health, reflection, explicit message limits."""

from __future__ import annotations

import ipaddress
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from executor.api import qledger_pb2 as pb
from executor.api import qledger_pb2_grpc as pb_grpc
from executor.backends import BackendCatalog
from executor.breaker import BreakerBoard
from executor.pipeline import ExecutionContext, RetryPolicy
from executor.queue import RunQueue
from executor.service import ExecutorService, LedgerService
from executor.worker import Worker
from ledger.app import LedgerApp
from ledger.content import MAX_ENTRY_BYTES
from ledger.keys import SigningKey

# A command is one signed entry; allow it with headroom, and refuse anything larger early.
MAX_RECEIVE_BYTES = 2 * MAX_ENTRY_BYTES
MAX_SEND_BYTES = 8 * MAX_ENTRY_BYTES
SERVICE_NAMES = tuple(s.full_name for s in pb.DESCRIPTOR.services_by_name.values())


class PlaintextRefusedError(ValueError):
    pass


def require_loopback(listen: str) -> None:
    """Plaintext is only for loopback; anything else needs TLS (issue 5)."""
    host = listen.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        pass
    raise PlaintextRefusedError(f"refusing plaintext gRPC on {listen}: use a loopback address")


@dataclass
class ExecutorSettings:
    """Operational settings: none of them changes a result, only how runs are carried out."""

    workers: int = 2
    lease_seconds: float = 30.0
    poll_seconds: float = 0.2
    max_attempts: int = 3
    max_pending: int = 1000
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    breaker_threshold: int = 3
    breaker_cooldown: float = 10.0


@dataclass
class RunningServer:
    server: grpc.Server
    port: int
    worker: Worker

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self, grace: float = 2.0) -> None:
        self.server.stop(grace).wait()
        self.worker.stop()


def start_server(app: LedgerApp, executor_key: SigningKey, checkpoint_key: SigningKey | None,
                 listen: str = "127.0.0.1:0", settings: ExecutorSettings | None = None,
                 catalog: BackendCatalog | None = None) -> RunningServer:
    require_loopback(listen)
    settings = settings or ExecutorSettings()
    app.add_signer(executor_key)
    queue = RunQueue(app)
    queue.create()
    ctx = ExecutionContext(catalog or BackendCatalog(),
                           BreakerBoard(settings.breaker_threshold, settings.breaker_cooldown),
                           settings.retry)
    worker = Worker(app, executor_key, queue, ctx, threads=settings.workers,
                    lease_seconds=settings.lease_seconds, poll_seconds=settings.poll_seconds,
                    max_attempts=settings.max_attempts)
    server = grpc.server(ThreadPoolExecutor(max_workers=16), options=[
        ("grpc.max_receive_message_length", MAX_RECEIVE_BYTES),
        ("grpc.max_send_message_length", MAX_SEND_BYTES),
    ])
    pb_grpc.add_ExecutorServicer_to_server(ExecutorService(app, worker, queue, settings.max_pending),
                                           server)
    pb_grpc.add_LedgerServicer_to_server(LedgerService(app, checkpoint_key), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", *SERVICE_NAMES):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection((*SERVICE_NAMES, reflection.SERVICE_NAME,
                                         health.SERVICE_NAME), server)
    port = server.add_insecure_port(listen)
    server.start()
    worker.start()
    return RunningServer(server, port, worker)


def client_channel(address: str) -> grpc.Channel:
    return grpc.insecure_channel(address, options=[
        ("grpc.max_receive_message_length", MAX_SEND_BYTES),
        ("grpc.max_send_message_length", MAX_RECEIVE_BYTES),
    ])
