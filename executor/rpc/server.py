"""Assembling the gRPC server: services, health, reflection, explicit message limits."""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry.instrumentation.grpc import server_interceptor

from qledger.api import qledger_pb2 as pb
from qledger.api import qledger_pb2_grpc as pb_grpc
from qledger.governance.budget_reservations import BudgetReservations
from qledger.governance.flood_control import FloodLimits
from qledger.governance.routing import route
from qledger.ledger.admin import ROOT, SERVICE_ROLE, InitResult, init_store
from qledger.ledger.app import DEFAULT_ORIGIN, CheckpointPolicy, LedgerApp
from qledger.ledger.artifacts import ArchiveDirectory
from qledger.ledger.errors import QledgerError
from qledger.ledger.follow import ProjectionFollower
from qledger.ledger.keys import KeyStore, SigningKey
from qledger.ledger.store.artifacts import HotArtifacts, StagedArtifacts
from qledger.provenance.projections import projection_follower, projection_runner
from qledger.rpc.access_log import AccessLogInterceptor
from qledger.rpc.authz import Authorizer
from qledger.rpc.channel import MAX_RECEIVE_BYTES, MAX_SEND_BYTES
from qledger.rpc.executor_service import ExecutorService
from qledger.rpc.ledger_service import LedgerService
from qledger.rpc.received import RequestBodyInterceptor
from qledger.runs.backends import BackendCatalog
from qledger.runs.breaker import BreakerBoard
from qledger.runs.pipeline import ExecutionContext, RetryPolicy
from qledger.runs.python_steps import StepPolicy
from qledger.runs.queue import RunQueue, SweepItems
from qledger.runs.submission import requeue_accepted
from qledger.runs.templates import register_builtins
from qledger.runs.worker import Worker

log = logging.getLogger("qledger.executor")
SERVICE_NAMES = tuple(s.full_name for s in pb.DESCRIPTOR.services_by_name.values())


class PlaintextRefusedError(QledgerError):
    """Plaintext gRPC was asked for on an address that is not loopback."""

    hint = "serve TLS (--tls-cert, --tls-key), or listen on a loopback address"


class ListenError(QledgerError):
    """The server cannot listen where it was asked to."""

    hint = "choose another --listen address, or stop the server that holds it"


class UnregisteredKeyError(QledgerError):
    """A key the server signs with is not registered (for its purpose, unrevoked) in its store."""

    hint = ("register it with `qledger keys add NAME --purpose PURPOSE --store URL`, URL being the "
            "database this server uses, as its admin")


def require_registered(app: LedgerApp, key: SigningKey, purpose: str) -> None:
    """Refuse to serve with a signing key the ledger would refuse: every run would fail later,
    far from the cause, with the client waiting."""
    record = app.ledger.key_record(key.key_id)
    if record is None:
        raise UnregisteredKeyError(f"the {purpose} key {key.principal!r} ({key.key_id[:16]}…) is not "
                                   f"registered in {app.store.url}")
    if record.revoked_at is not None:
        raise UnregisteredKeyError(f"the {purpose} key {key.principal!r} ({key.key_id[:16]}…) was revoked "
                                   f"at position {record.revoked_at}")
    if record.purpose != purpose or record.principal != key.principal:
        raise UnregisteredKeyError(f"key {key.key_id[:16]}… is registered to {record.principal!r} as "
                                   f"{record.purpose!r}, not to {key.principal!r} as {purpose!r}")


def require_free(listen: str) -> None:
    """Refuse an address another process listens on.  gRPC would share it (SO_REUSEPORT) and
    clients would then reach two ledgers at random; binding a plain socket first tells."""
    host, _, port = listen.rpartition(":")
    if not port.isdigit() or int(port) == 0:
        return
    host = host.strip("[]") or "0.0.0.0"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # SO_REUSEADDR on Linux passes over connections lingering in TIME_WAIT, never over a listener.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, int(port)))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ListenError(f"{listen} is in use by another process (another qledger serve?)") from None
            raise ListenError(f"cannot listen on {listen}: {exc.strerror}") from None


class TLSMaterialError(QledgerError):
    """The server's certificate, key or client CA is not what its option says."""

    hint = ("--tls-cert takes the PEM certificate (chain), --tls-key its private key, --client-ca a "
            "CA certificate")


def tls_problem(cert: bytes, key: bytes, client_ca: bytes | None) -> str | None:
    """What is wrong with the TLS material, in the words of its options; None if nothing.  gRPC
    itself would only say that it failed to bind."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    if b"PRIVATE KEY-----" in cert and b"-----BEGIN CERTIFICATE" in key:
        return "--tls-cert holds a private key and --tls-key a certificate: they are swapped"
    try:
        certificate = x509.load_pem_x509_certificate(cert)
    except ValueError:
        holds_key = b"PRIVATE KEY" in cert
        return "--tls-cert is not a PEM certificate" + (" (it holds a private key)" if holds_key else "")
    try:
        private = serialization.load_pem_private_key(key, password=None)
    except (ValueError, TypeError) as exc:
        return f"--tls-key is not an unencrypted PEM private key ({exc})"
    spki = serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    if certificate.public_key().public_bytes(*spki) != private.public_key().public_bytes(*spki):
        return "--tls-key is not the private key of the certificate in --tls-cert"
    if client_ca is not None:
        try:
            x509.load_pem_x509_certificates(client_ca)
        except ValueError:
            return "--client-ca is not a PEM certificate"
    return None


@dataclass(frozen=True)
class TLSConfig:
    """Server certificate and key (PEM); with ``client_ca``, clients must present a certificate
    signed by it (mutual TLS)."""

    cert: bytes
    key: bytes
    client_ca: bytes | None = None

    @classmethod
    def from_files(cls, cert: Path, key: Path, client_ca: Path | None = None) -> TLSConfig:
        config = cls(cert.read_bytes(), key.read_bytes(), client_ca.read_bytes() if client_ca else None)
        problem = tls_problem(config.cert, config.key, config.client_ca)
        if problem:
            raise TLSMaterialError(problem)
        return config

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials([(self.key, self.cert)], root_certificates=self.client_ca,
                                           require_client_auth=self.client_ca is not None)


def require_loopback(listen: str) -> None:
    """Plaintext is only for loopback; anything else needs TLS."""
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
    metrics_port: int | None = None  # Prometheus endpoint (0: any free port)
    metrics_address: str = "127.0.0.1"  # a container sets 0.0.0.0 for its scraper
    projection_poll_seconds: float = 2.0  # PostgreSQL also wakes them by NOTIFY
    # A signed checkpoint after this many new entries, or this long after an entry (if the
    # server holds the checkpoint key); GetCheckpoint makes one on demand as well.
    checkpoint_every: int = 1000
    checkpoint_seconds: float = 60.0
    # Every call authorised by role and project (governance entries); off only for harnesses
    # that test something else.
    authorize: bool = True
    flood: FloodLimits = field(default_factory=FloodLimits)
    # Python steps of installed code this server runs (entry points of qledger.steps), each in
    # a child process under these limits.
    steps: StepPolicy = field(default_factory=StepPolicy)
    # The directory `qledger archive` moves artifacts to: GetArtifact reads there what the
    # store's hot table no longer holds.
    archive: Path | None = None


@dataclass
class RunningServer:
    server: grpc.Server
    port: int
    worker: Worker
    metrics_server: Any = None
    follower: ProjectionFollower | None = None
    checkpointer: Periodic | None = None
    authz: Authorizer | None = None
    summaries: Periodic | None = None

    @property
    def metrics_port(self) -> int | None:
        return None if self.metrics_server is None else int(self.metrics_server.server_port)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self, grace: float = 2.0) -> None:
        self.server.stop(grace).wait()
        if self.summaries is not None:
            self.summaries.stop()
        if self.authz is not None:
            self.authz.record_summaries(flush_all=True)  # counted refusals are not lost at exit
        self.worker.stop()
        if self.follower is not None:
            self.follower.stop()
        if self.checkpointer is not None:
            self.checkpointer.stop()
        if self.metrics_server is not None:
            self.metrics_server.shutdown()


def prepare_store(app: LedgerApp, keys: KeyStore, origin: str = DEFAULT_ORIGIN,
                  service_role: str = SERVICE_ROLE) -> InitResult:
    """Everything a server needs in a store, made by its owner (``qledger init``): the ledger's
    tables, triggers, grants, genesis and keys, the projection tables, the run queue, the
    table of sweep chunks and the budget reservations.  The server itself, running as the
    service role, only creates what is missing."""
    result = init_store(app, keys, origin, service_role, projection_runner(app))
    RunQueue(app).create(service_role if app.store.is_postgres else None)
    SweepItems(app).create(service_role if app.store.is_postgres else None)
    BudgetReservations(app).create(service_role if app.store.is_postgres else None)
    register_builtins(app, keys.load(ROOT))
    return result


def start_server(app: LedgerApp, executor_key: SigningKey, checkpoint_key: SigningKey | None,
                 listen: str = "127.0.0.1:0", settings: ExecutorSettings | None = None,
                 catalog: BackendCatalog | None = None, tls: TLSConfig | None = None,
                 export_key: SigningKey | None = None) -> RunningServer:
    if tls is None:
        require_loopback(listen)
    require_free(listen)
    app.require_origin()
    for key, purpose in ((executor_key, "executor"), (checkpoint_key, "checkpoint"), (export_key, "export")):
        if key is not None:
            require_registered(app, key, purpose)
    settings = settings or ExecutorSettings()
    app.add_signer(executor_key)
    checkpointer = None
    if checkpoint_key is not None:
        app.use_checkpoint_policy(CheckpointPolicy(checkpoint_key, settings.checkpoint_every,
                                                   settings.checkpoint_seconds))
        # Appends check the policy as they go; this covers the quiet after the last one.
        checkpointer = Periodic(max(0.05, min(1.0, settings.checkpoint_seconds)), app.checkpoint_if_due)
    queue = RunQueue(app)
    queue.ensure()
    for run_id in requeue_accepted(app, queue):
        log.warning("run %s was recorded but not queued; queued it now", run_id)
    sweep_items = SweepItems(app)
    sweep_items.ensure()
    BudgetReservations(app).ensure()
    HotArtifacts(app.ledger).ensure_table()
    ctx = ExecutionContext(catalog or BackendCatalog(),
                           BreakerBoard(settings.breaker_threshold, settings.breaker_cooldown),
                           settings.retry, artifacts=StagedArtifacts(app.ledger), steps=settings.steps)
    worker = Worker(app, executor_key, queue, ctx, threads=settings.workers,
                    lease_seconds=settings.lease_seconds, poll_seconds=settings.poll_seconds,
                    max_attempts=settings.max_attempts, sweep_items=sweep_items)
    # Outermost first: bodies parsed (or refused), the call's span, then its access log line.
    interceptors = [RequestBodyInterceptor(), server_interceptor(), AccessLogInterceptor()]
    server = grpc.server(ThreadPoolExecutor(max_workers=16), interceptors=interceptors, options=[
        ("grpc.so_reuseport", 0),  # never share a port with another server
        ("grpc.max_receive_message_length", MAX_RECEIVE_BYTES),
        ("grpc.max_send_message_length", MAX_SEND_BYTES),
    ])
    authz = Authorizer(app, executor_key.principal, settings.authorize, settings.flood)
    backends = ctx.catalog.names()
    worker.route = lambda spec, run_id: route(authz.policies.current(), spec, run_id, backends)
    worker.settle = BudgetReservations(app).settle_with_next_append
    projections = projection_runner(app)
    pb_grpc.add_ExecutorServicer_to_server(
        ExecutorService(app, queue, settings.max_pending, authz, projections, backends, worker.changes,
                        worker.wake, executor_key.principal, settings.steps.allowed,
                        ArchiveDirectory(settings.archive) if settings.archive else None), server)
    pb_grpc.add_LedgerServicer_to_server(
        LedgerService(app, checkpoint_key, authz, projections, export_key), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", *SERVICE_NAMES):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection((*SERVICE_NAMES, reflection.SERVICE_NAME,
                                         health.SERVICE_NAME), server)
    try:
        port = server.add_secure_port(listen, tls.credentials()) if tls else server.add_insecure_port(listen)
    except RuntimeError as exc:  # the address was free a moment ago: the TLS material is what failed
        raise ListenError(f"cannot serve on {listen}: {exc}" + (
            "; check that --tls-cert is a PEM certificate and --tls-key its private key" if tls else "")
        ) from None
    metrics = None
    if settings.metrics_port is not None:
        where = f"{settings.metrics_address}:{settings.metrics_port}"
        try:
            metrics = worker.metrics.serve(settings.metrics_port, settings.metrics_address)
        except OSError as exc:
            server.stop(0)
            hint = " (another process holds it; choose another --metrics-port)" \
                if exc.errno == errno.EADDRINUSE else ""
            raise ListenError(f"cannot serve metrics on {where}: {exc.strerror}{hint}") from None
    # Started first: it makes sure the projection tables exist before any call reads them.
    follower = projection_follower(app, projections, settings.projection_poll_seconds).start()
    worker.metrics.watch_projections(follower)
    server.start()
    worker.start()
    if checkpointer is not None:
        checkpointer.start()
    summaries = Periodic(max(0.05, min(5.0, settings.flood.window_seconds / 4)), authz.record_summaries)
    summaries.start()
    return RunningServer(server, port, worker, metrics, follower, checkpointer, authz, summaries)


class Periodic:
    """Calls ``action`` every ``interval`` seconds on a daemon thread until stopped."""

    def __init__(self, interval: float, action: Callable[[], object]) -> None:
        self.interval, self.action = interval, action
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="qledger-periodic", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.action()
