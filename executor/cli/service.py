"""``qledger init``, ``qledger serve`` and ``qledger health``: a store made ready for a server, the
server itself, and its probe."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from qledger.cli.calls import (
    CAOption,
    CertOption,
    KeyOption,
    ServerNameOption,
    ServerOption,
    grpc_errors,
    target,
)
from qledger.ledger import admin
from qledger.ledger.cli_common import StoreOption, fail, open_app, reported_errors
from qledger.ledger.keys import KeyStore


def register(app: typer.Typer) -> None:
    app.command("init")(init)
    app.command("serve")(serve)
    app.command("health")(health)


def init(store: StoreOption = None,
         origin: Annotated[str | None, typer.Option(
             help="The ledger's origin line, e.g. ledger.example.com/prod (default: a unique "
                  "qledger.local/<random>); chosen once, at genesis")] = None,
         service_role: Annotated[str, typer.Option(help="PostgreSQL role to grant INSERT, SELECT")]
         = admin.SERVICE_ROLE) -> None:
    """Create tables, triggers, grants, the genesis entry and the root and checkpoint keys."""
    from qledger.rpc.server import prepare_store

    problem = admin.origin_problem(origin) if origin is not None else None
    if problem:
        raise fail(f"--origin {origin!r}: {problem}")
    with reported_errors():
        ledger = open_app(store, initialised=False)
        result = prepare_store(ledger, KeyStore.default(), origin or admin.unique_origin(), service_role)
        if origin is not None and result.origin != origin:
            raise fail(f"{ledger.store.url} was initialised with origin {result.origin!r}; "
                       "a ledger's origin is chosen once, at genesis")
        typer.echo(f"{'initialised' if result.created_genesis else 'already initialised'}: "
                   f"{ledger.store.url} (origin {result.origin}, {ledger.tree_size()} entries)")




def _load_config(ctx: typer.Context, path: Path | None) -> Path | None:
    """``--config FILE``: a TOML file whose [serve] table gives option defaults.  Command-line
    options win over environment variables, which win over the file."""
    if path is None:
        return None
    import tomllib

    try:
        table = tomllib.loads(path.read_text(encoding="utf-8")).get("serve", {})
    except OSError as exc:
        raise typer.BadParameter(f"cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise typer.BadParameter(f"{path} is not TOML: {exc}") from None
    known = {p.name for p in ctx.command.params} - {"config"}
    settings = {key.replace("-", "_"): value for key, value in table.items()}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise typer.BadParameter(f"{path}: unknown setting(s) {', '.join(unknown)} in [serve]")
    ctx.default_map = {**(ctx.default_map or {}), **settings}
    return path


def serve(config: Annotated[Path | None, typer.Option(envvar="QLEDGER_CONFIG", is_eager=True,
                                                      callback=_load_config, help="TOML file, [serve] table")]
          = None,
          store: StoreOption = None,
          listen: Annotated[str, typer.Option(envvar="QLEDGER_LISTEN",
                                              help="host:port (plaintext: loopback only)")]
          = "127.0.0.1:50051",
          workers: Annotated[int, typer.Option(min=0, envvar="QLEDGER_WORKERS",
                                               help="Runs executed at once (0: ledger API only)")] = 2,
          executor: Annotated[str, typer.Option(envvar="QLEDGER_EXECUTOR",
                                                help="Principal whose key signs execution events")]
          = "executor-1",
          tls_cert: Annotated[Path | None, typer.Option(envvar="QLEDGER_TLS_CERT",
                                                        help="Server certificate (PEM)")] = None,
          tls_key: Annotated[Path | None, typer.Option(envvar="QLEDGER_TLS_KEY",
                                                       help="Server private key (PEM)")] = None,
          client_ca: Annotated[Path | None, typer.Option(envvar="QLEDGER_CLIENT_CA",
                                                         help="CA for client certificates (mTLS)")]
          = None,
          metrics_port: Annotated[int | None, typer.Option(envvar="QLEDGER_METRICS_PORT",
                                                           help="Serve Prometheus metrics on this port")]
          = None,
          metrics_address: Annotated[str, typer.Option(envvar="QLEDGER_METRICS_ADDRESS",
                                                       help="Address the metrics endpoint binds")]
          = "127.0.0.1",
          checkpoint_every: Annotated[int, typer.Option(min=1, envvar="QLEDGER_CHECKPOINT_EVERY",
                                                        help="Sign a checkpoint after this many entries")]
          = 1000,
          checkpoint_seconds: Annotated[float, typer.Option(min=0.1, envvar="QLEDGER_CHECKPOINT_SECONDS",
                                                            help="... or this long after an entry")]
          = 60.0,
          authorize: Annotated[bool, typer.Option(envvar="QLEDGER_AUTHORIZE",
                                                  help="Authorise every call by role and project")]
          = True,
          max_denials_per_second: Annotated[float, typer.Option(
              min=0.01, envvar="QLEDGER_MAX_DENIALS_PER_SECOND",
              help="Refused calls a peer may make a second (20 s' worth at once) before RESOURCE_EXHAUSTED")]
          = 5.0,
          max_calls_per_second: Annotated[float, typer.Option(
              min=0.01, envvar="QLEDGER_MAX_CALLS_PER_SECOND",
              help="Calls a principal may make a second (20 s' worth at once)")]
          = 1000.0,
          allow_step: Annotated[list[str] | None, typer.Option(
              help="A python step (entry point of qledger.steps) this server runs; repeat for more")] = None,
          step_timeout: Annotated[float, typer.Option(min=0.1, help="Seconds a python step may run")] = 60.0,
          step_memory_mb: Annotated[int, typer.Option(min=16, help="MiB of memory a python step may use")]
          = 2048,
          archive: Annotated[Path | None, typer.Option(
              envvar="QLEDGER_ARCHIVE", help="The archive directory `qledger archive` moves artifacts to: "
              "GetArtifact reads there what the store no longer holds")] = None,
          log_format: Annotated[str, typer.Option(envvar="QLEDGER_LOG_FORMAT", help="json or text")]
          = "json",
          plaintext: Annotated[bool, typer.Option(envvar="QLEDGER_PLAINTEXT",
                                                  help="Serve without TLS (loopback addresses only)")]
          = False) -> None:
    """Serve the Executor and Ledger gRPC services: TLS (mTLS with --client-ca), or plaintext on
    loopback only."""
    import signal
    import time

    from qledger.governance.flood_control import FloodLimits
    from qledger.ops.tracing import configure_json_logging, configure_tracing_from_environment
    from qledger.rpc.server import ExecutorSettings, TLSConfig, start_server
    from qledger.runs.python_steps import StepPolicy

    if log_format not in ("json", "text"):
        raise fail("--log-format is json or text")
    if log_format == "json":
        configure_json_logging()
    else:
        logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s")
        logging.getLogger("qledger").setLevel(logging.INFO)  # ours; libraries stay at WARNING
    configure_tracing_from_environment()
    with reported_errors():
        keys = KeyStore.default()
        ledger = open_app(store)
        ledger.require_origin()
        checkpointer = keys.load(admin.CHECKPOINTER) if keys.exists(admin.CHECKPOINTER) else None
        if (tls_cert is None) != (tls_key is None) or (client_ca and not tls_cert):
            raise fail("--tls-cert and --tls-key go together (and --client-ca needs them)")
        if tls_cert is None and not plaintext:
            raise fail("give --tls-cert and --tls-key, or ask for --plaintext (loopback only)")
        if tls_cert is not None and plaintext:
            raise fail("--plaintext and --tls-cert exclude each other")
        try:
            tls = TLSConfig.from_files(tls_cert, tls_key, client_ca) if tls_cert and tls_key else None
            exporter = keys.load(admin.EXPORTER) if keys.exists(admin.EXPORTER) else None
            running = start_server(ledger, keys.load(executor), checkpointer, listen,
                                   ExecutorSettings(workers=workers, metrics_port=metrics_port,
                                                    metrics_address=metrics_address,
                                                    checkpoint_every=checkpoint_every,
                                                    checkpoint_seconds=checkpoint_seconds,
                                                    authorize=authorize,
                                                    flood=FloodLimits(max_denials_per_second,
                                                                      max_calls_per_second),
                                                    steps=StepPolicy(frozenset(allow_step or ()),
                                                                     step_timeout, step_memory_mb << 20),
                                                    archive=archive),
                                   tls=tls,
                                   export_key=exporter)
        except OSError as exc:
            if exc.filename is None:
                raise fail(f"cannot serve: {exc.strerror or exc}") from None
            raise fail(f"cannot read {exc.filename}: {exc.strerror}") from None
        except (ValueError, RuntimeError) as exc:
            raise fail(str(exc)) from None
    # A signal handler must not take a lock the interrupted main thread may hold (threading.Event
    # can deadlock when a SIGTERM lands inside its wait), so it only flips a flag the loop polls.
    stopping: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, _frame: stopping.append(signum))
    signal.signal(signal.SIGINT, lambda signum, _frame: stopping.append(signum))
    typer.echo(f"serving qledger.v1 on {listen.rsplit(':', 1)[0]}:{running.port} ({ledger.store.url})")
    while not stopping:
        time.sleep(0.2)
    running.stop()


def health(server: ServerOption = "127.0.0.1:50051", ca: CAOption = None, cert: CertOption = None,
           key: KeyOption = None, server_name: ServerNameOption = None) -> None:
    """gRPC health check of a server (grpc.health.v1): exit 0 when SERVING.  For probes."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    to = target(server, ca, cert, key, server_name)
    with reported_errors(), grpc_errors(), to.channel() as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    typer.echo(status)
    if status != "SERVING":
        raise typer.Exit(1)
