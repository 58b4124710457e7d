"""The ``qledger`` command.  Exit codes: 0 success, 1 verification failed, 2 could not run."""

from __future__ import annotations

import base64
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from executor.cli_governance import register as register_governance
from executor.cli_views import register as register_views
from ledger import admin
from ledger.app import DEFAULT_ORIGIN
from ledger.artifacts import ArchiveDirectory, ArtifactChecker, HotArtifacts, archive
from ledger.checkpoint import parse_note
from ledger.cli_common import StoreOption, fail, grpc_errors, open_app, print_json, reported_errors
from ledger.exportlog import LogFileSource, write_log
from ledger.keys import KeyStore
from ledger.source import LedgerSource
from ledger.verify import BatchCheck, VerifyReport, verify

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="qledger: a signed, hash-chained provenance ledger.")
proof_app = typer.Typer(no_args_is_help=True, help="RFC 9162 proofs, as JSON.")
keys_app = typer.Typer(no_args_is_help=True, help="Register, revoke and list keys.")
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks that print ratios to baselines.")
app.add_typer(proof_app, name="proof")
app.add_typer(keys_app, name="keys")
app.add_typer(bench_app, name="bench")

@app.command()
def init(store: StoreOption = None,
         origin: Annotated[str, typer.Option(help="The ledger's origin line")] = DEFAULT_ORIGIN,
         service_role: Annotated[str, typer.Option(help="PostgreSQL role to grant INSERT, SELECT")]
         = admin.SERVICE_ROLE) -> None:
    """Create tables, triggers, grants, the genesis entry and the root and checkpoint keys."""
    from executor.server import prepare_store

    with reported_errors():
        ledger = open_app(store)
        result = prepare_store(ledger, KeyStore.default(), origin, service_role)
        typer.echo(f"{'initialised' if result.created_genesis else 'already initialised'}: "
                   f"{ledger.store.url} (origin {result.origin}, {ledger.tree_size()} entries)")


ArchiveOption = Annotated[Path | None, typer.Option(
    "--archive", envvar="QLEDGER_ARCHIVE", help="Archive directory holding moved artifacts")]


def _progress_verify(source: LedgerSource, start: int, stop: int | None, jobs: int,
                     artifacts: BatchCheck | None = None) -> VerifyReport:
    total = (stop or source.tree_size()) - start + 1
    columns = (TextColumn("verifying"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, transient=True, console=None, disable=not sys.stderr.isatty()) as bar:
        task = bar.add_task("verify", total=max(total, 0))
        return verify(source, start, stop, jobs, lambda n: bar.advance(task, n), artifacts)


@app.command("verify")
def verify_command(
    store: StoreOption = None,
    from_: Annotated[int, typer.Option("--from", min=1, help="First position to check")] = 1,
    to: Annotated[int | None, typer.Option(min=1, help="Last position to check")] = None,
    jobs: Annotated[int, typer.Option(min=1, help="Worker processes for signatures")] = 1,
    log: Annotated[Path | None, typer.Option(help="Verify an exported log file instead")] = None,
    archive: ArchiveOption = None,
) -> None:
    """Recompute every hash, signature and checkpoint, and check every referenced artifact;
    exit 1 at the first break, 3 if intact but archived artifacts are missing."""
    with reported_errors():
        source: LedgerSource
        hot: HotArtifacts | None = None
        if log is not None:
            source = LogFileSource(log)
        else:
            app = open_app(store)
            source, hot = app.source(), HotArtifacts(app.ledger)
        checker = ArtifactChecker(hot if hot is not None and hot.exists() else None,
                                  ArchiveDirectory(archive) if archive else None)
        report = _progress_verify(source, from_, to, jobs, checker.check)
    if report.finding is not None:
        raise fail(f"TAMPERED: {report.finding}", 1)
    found = checker.result
    typer.echo(f"OK: {report.entries_checked} entries, {report.checkpoints_checked} checkpoints, "
               f"root {report.root_hash.hex()} at size {report.tree_size}; artifacts: {found.referenced} "
               f"referenced, {found.hot} hot, {found.archived} archived, {len(found.missing)} missing")
    if found.missing:
        for position, sha in found.missing[:20]:
            typer.echo(f"MISSING: position {position}: artifact {sha}", err=True)
        raise fail(f"{len(found.missing)} referenced artifact(s) are in neither the store nor the archive "
                   "(not tampering: the entries and their digests verify)", 3)


@app.command("archive")
def archive_command(
    to: Annotated[Path, typer.Option("--to", help="Archive directory (content-addressed)")],
    store: StoreOption = None,
    min_bytes: Annotated[int, typer.Option(min=0, help="Only artifacts at least this large")] = 0,
) -> None:
    """Move large artifacts from the store to an archive directory, each checked against its
    digest before its hot copy is removed.  Entries, and so verification, are unchanged."""
    with reported_errors():
        app = open_app(store)  # owns the connection pool: keep it alive while hot is used
        hot = HotArtifacts(app.ledger)
        if not hot.exists():
            raise fail("this store has no artifact table; run `qledger init`")
        result = archive(hot, ArchiveDirectory(to), min_bytes)
    typer.echo(f"archived {result.moved} artifacts ({result.bytes} bytes) to {to}")


@app.command("export-log")
def export_log(output: Annotated[Path, typer.Option("-o", "--output", help="JSON Lines file")],
               store: StoreOption = None) -> None:
    """Write the whole ledger as JSON Lines that `qledger verify --log` checks offline."""
    with reported_errors():
        source = open_app(store).source()
        try:
            with output.open("w", encoding="utf-8") as fh:
                count = write_log(source, fh)
        except OSError as exc:
            raise fail(f"cannot write {output}: {exc.strerror}") from None
    typer.echo(f"exported {count} entries to {output}")


@app.command("export-bundle")
def export_bundle_command(run: Annotated[str, typer.Argument(
                              help="Run id, or an artifact (node id or sha256) of the run")],
                          output: Annotated[Path, typer.Option("-o", "--output")],
                          store: StoreOption = None) -> None:
    """Write the signed lineage bundle (in-toto Statement in DSSE) of the run, or of the run that
    generated the artifact, for offline verification."""
    from executor.projections import projection_runner, resolve_run
    from ledger.export_bundle import export_recorded

    with reported_errors():
        ledger = open_app(store)
        stream_id = resolve_run(ledger, projection_runner(ledger), run)
        ledger.require_origin()
        keys = KeyStore.default()
        from executor.lineage import lineage_json

        exporter = admin.export_key(ledger, keys)
        data = export_recorded(ledger, stream_id, exporter, keys.load(admin.CHECKPOINTER), lineage_json)
        try:
            output.write_bytes(data)
        except OSError as exc:
            raise fail(f"cannot write {output}: {exc.strerror}") from None
    typer.echo(f"bundle for run {run}: {output} ({len(data)} bytes)")


@app.command("verify-bundle")
def verify_bundle_command(
    bundle: Path,
    trusted_key: Annotated[Path | None, typer.Option(help="File with the export key's public key (hex)")]
    = None,
) -> None:
    """Check a bundle offline: outer signature, entries, keys, inclusion proofs, checkpoint."""
    from ledger.bundle import BundleInvalidError, verify_bundle
    from ledger.keys import PublicKey

    with reported_errors():
        try:
            data = bundle.read_bytes()
            pinned = PublicKey(bytes.fromhex(trusted_key.read_text().strip())) if trusted_key else None
        except OSError as exc:
            raise fail(f"cannot read {exc.filename}: {exc.strerror}") from None
        except ValueError:
            raise fail("--trusted-key must hold a hex Ed25519 public key") from None
        from executor.lineage import lineage_json

        try:
            report = verify_bundle(data, pinned, lineage_json)
        except BundleInvalidError as exc:
            raise fail(f"INVALID: {exc}", 1) from None
    typer.echo(f"VALID: run {report.stream_id}, {report.entries} entries proven against the checkpoint "
               f"of size {report.tree_size}, {len(report.subjects)} subjects")


@keys_app.command("public")
def keys_public(principal: str) -> None:
    """Print PRINCIPAL's public key (hex), e.g. to pin with verify-bundle --trusted-key."""
    with reported_errors():
        typer.echo(KeyStore.default().load(principal).public.raw.hex())


@app.command()
def checkpoint(store: StoreOption = None) -> None:
    """Sign a checkpoint of the tree now and print it."""
    with reported_errors():
        ledger = open_app(store)
        ledger.require_origin()
        key = KeyStore.default().load(admin.CHECKPOINTER)
        note = ledger.checkpoint(key)
        checkpoint = parse_note(note).checkpoint
        print_json({"tree_size": checkpoint.tree_size,
                     "root_hash": base64.b64encode(checkpoint.root_hash).decode(), "note": note})


@proof_app.command("inclusion")
def proof_inclusion(position: int, size: Annotated[int | None, typer.Option()] = None,
                    store: StoreOption = None) -> None:
    """Inclusion proof of the entry at POSITION in the tree of --size entries (default: all)."""
    with reported_errors():
        print_json(open_app(store).inclusion_proof(position, size))


@proof_app.command("consistency")
def proof_consistency(first: int, second: int, store: StoreOption = None) -> None:
    """Consistency proof that the tree of FIRST entries is a prefix of the tree of SECOND."""
    with reported_errors():
        print_json(open_app(store).consistency_proof(first, second))


@keys_app.command("add")
def keys_add(principal: str,
             purpose: Annotated[str, typer.Option(help="client, executor, admin, checkpoint, export")]
             = "client",
             store: StoreOption = None) -> None:
    """Create (or reuse) PRINCIPAL's key under $QLEDGER_HOME and register it, signed by root."""
    with reported_errors():
        key = admin.add_key(open_app(store), KeyStore.default(), principal, purpose)
        typer.echo(key.key_id)


@keys_app.command("revoke")
def keys_revoke(key_id: str, reason: Annotated[str, typer.Option()] = "revoked by admin",
                store: StoreOption = None) -> None:
    """Revoke KEY_ID from the next position on; history signed before stays valid."""
    with reported_errors():
        open_app(store).revoke_key(admin.ROOT, key_id, reason)
        typer.echo(f"revoked {key_id}")


@keys_app.command("list")
def keys_list(store: StoreOption = None) -> None:
    with reported_errors():
        print_json(admin.key_listing(open_app(store)))


@app.command()
def demo(workdir: Annotated[Path | None, typer.Option(help="Keep the demo store here")] = None) -> None:
    """The main job: submit, execute on Qiskit Aer, verify, export and verify offline (SQLite)."""
    from executor.demo import run_demo

    with reported_errors():
        if not run_demo(workdir, typer.echo):
            raise fail("demo ledger did not verify", 1)


runs_app = typer.Typer(no_args_is_help=True, help="Inspect workflow runs on a server.")
app.add_typer(runs_app, name="runs")
ServerOption = Annotated[str, typer.Option("--server", help="host:port of a qledger server")]


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


@app.command()
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
          log_format: Annotated[str, typer.Option(envvar="QLEDGER_LOG_FORMAT", help="json or text")]
          = "json",
          plaintext: Annotated[bool, typer.Option(envvar="QLEDGER_PLAINTEXT",
                                                  help="Serve without TLS (loopback addresses only)")]
          = False) -> None:
    """Serve the Executor and Ledger gRPC services: TLS (mTLS with --client-ca), or plaintext on
    loopback only."""
    import signal
    import threading

    from executor.observability import configure_json_logging, configure_tracing_from_environment
    from executor.server import ExecutorSettings, TLSConfig, start_server

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
                                                    authorize=authorize), tls=tls,
                                   export_key=exporter)
        except OSError as exc:
            raise fail(f"cannot read {exc.filename}: {exc.strerror}") from None
        except (ValueError, RuntimeError) as exc:
            raise fail(str(exc)) from None
    typer.echo(f"serving qledger.v1 on {listen.rsplit(':', 1)[0]}:{running.port} ({ledger.store.url})")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    running.stop()


@app.command()
def health(server: ServerOption = "127.0.0.1:50051",
           ca: Annotated[Path | None, typer.Option(envvar="QLEDGER_CA", help="CA of the server (TLS)")]
           = None,
           cert: Annotated[Path | None, typer.Option(envvar="QLEDGER_CLIENT_CERT", help="Client certificate")]
           = None,
           key: Annotated[Path | None, typer.Option(envvar="QLEDGER_CLIENT_KEY", help="Client key")] = None,
           server_name: Annotated[str | None, typer.Option(help="Name in the server's certificate")]
           = None) -> None:
    """gRPC health check of a server (grpc.health.v1): exit 0 when SERVING.  For probes."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from executor.server import client_channel

    with reported_errors(), grpc_errors():
        try:
            material = [p.read_bytes() if p else None for p in (ca, cert, key)]
        except OSError as exc:
            raise fail(f"cannot read {exc.filename}: {exc.strerror}") from None
        with client_channel(server, material[0], material[1], material[2], server_name) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    typer.echo(status)
    if status != "SERVING":
        raise typer.Exit(1)


@app.command()
def submit(workflow: Path, server: ServerOption = "127.0.0.1:50051",
           principal: Annotated[str, typer.Option("--as", help="Whose key signs the command")] = "client",
           key: Annotated[str | None, typer.Option("--idempotency-key")] = None,
           wait: Annotated[bool, typer.Option(help="Watch the run's entries until it ends")] = False) -> None:
    """Sign and submit WORKFLOW (JSON); with --wait, show each step as it is recorded."""
    from executor.client import read_workflow, submit_and_watch

    with reported_errors(), grpc_errors():
        signer = KeyStore.default().load(principal)
        body = read_workflow(workflow)

        def show(entry: Any) -> None:
            from ledger import dsse
            from ledger.content import EntryContent

            content = EntryContent.from_bytes(dsse.parse(entry.envelope).payload)
            step = content.payload.get("step", "")
            typer.echo(f"  {entry.position:>8}  {entry.event_type.rsplit('.', 1)[-1]:<13} {step:<20} "
                       f"signed by {content.principal}")

        run = submit_and_watch(server, signer, body, key, wait, show)
    typer.echo(f"run {run.run_id}: {run.status}" + (f" ({run.error})" if run.error else ""))
    if run.status == "failed":
        raise typer.Exit(1)


AsCaller = Annotated[str, typer.Option("--as", help="Whose key signs the calls")]


@runs_app.command("list")
def runs_list(server: ServerOption = "127.0.0.1:50051",
              limit: Annotated[int, typer.Option(min=1, max=1000)] = 50,
              principal: AsCaller = "client") -> None:
    """The most recent runs you may see, newest first: id, status, workflow, submitter."""
    from executor.client import list_runs

    with reported_errors(), grpc_errors():
        runs = list_runs(server, limit, KeyStore.default().load(principal))
    for run in runs:
        typer.echo(f"{run.run_id}  {run.status:<10} {run.workflow:<24} {run.submitted_by}")


@runs_app.command("show")
def runs_show(run_id: str, server: ServerOption = "127.0.0.1:50051",
              principal: AsCaller = "client") -> None:
    from executor.client import get_run

    with reported_errors(), grpc_errors():
        run = get_run(server, run_id, KeyStore.default().load(principal))
    print_json({"run_id": run.run_id, "workflow": run.workflow, "status": run.status,
                 "steps": list(run.steps), "submitted_by": run.submitted_by, "error": run.error,
                 "version": run.version})


@bench_app.command("ledger")
def bench_ledger(store: StoreOption = None,
                 events: Annotated[int, typer.Option(min=100)] = 5000,
                 proof_sizes: Annotated[str, typer.Option(help="Comma-separated tree sizes")]
                 = "100000,1000000",
                 grow_to: Annotated[int, typer.Option(
                     min=0, help="Then grow the ledger to this many entries and measure (e) and (h) "
                                 "again")] = 0) -> None:
    """Throughput of plain eventsourcing vs ledger appends, verify, Ed25519, proofs, verify RSS."""
    from ledger.bench import run_ledger_bench

    with reported_errors():
        run_ledger_bench(store, events, [int(s) for s in proof_sizes.split(",") if s], grow_to)


@bench_app.command("executor")
def bench_executor(store: StoreOption = None,
                   runs: Annotated[int, typer.Option(min=5)] = 50) -> None:
    """Raw Aer run() vs the same workflow through the service (p50/p99), and 16-client runs/s."""
    from executor.bench import run_executor_bench

    with reported_errors():
        run_executor_bench(store, runs)


register_views(app)
register_governance(app)


@bench_app.command("projections")
def bench_projections(store: StoreOption = None,
                      entries: Annotated[int, typer.Option(min=1000)] = 100_000) -> None:
    """Rebuild entries/s per projection, lineage queries, one run's bundle export and verify."""
    from executor.bench_projections import run_projections_bench

    with reported_errors():
        run_projections_bench(store, entries)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
