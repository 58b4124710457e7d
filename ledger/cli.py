"""The ledger's own commands (verify, archive, export-log, checkpoint, proofs, keys, the ledger
benchmark).  The ``qledger`` command registers them beside the executor's; ``python -m
qledger.ledger`` runs them alone.  Exit codes: 0 success, 1 verification failed, 2 could not run,
3 intact but artifacts missing."""

from __future__ import annotations

import base64
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from qledger.ledger import admin
from qledger.ledger.artifacts import ArchiveDirectory, ArtifactChecker
from qledger.ledger.checkpoint import parse_note
from qledger.ledger.cli_common import StoreOption, fail, open_app, print_json, reported_errors
from qledger.ledger.exportlog import LogFileSource, write_log
from qledger.ledger.keys import KeyStore
from qledger.ledger.source import LedgerSource
from qledger.ledger.store.artifacts import HotArtifacts, archive
from qledger.ledger.verify import BatchCheck, VerifyReport, verify

proof_app = typer.Typer(no_args_is_help=True, help="RFC 9162 proofs, as JSON.")
keys_app = typer.Typer(no_args_is_help=True, help="Register, revoke and list keys.")


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    """Add the ledger's commands to ``app`` and its benchmark to ``bench_app``."""
    app.command("verify")(verify_command)
    app.command("archive")(archive_command)
    app.command("export-log")(export_log)
    app.command("checkpoint")(checkpoint)
    app.add_typer(proof_app, name="proof")
    app.add_typer(keys_app, name="keys")
    bench_app.command("ledger")(bench_ledger)


def ledger_app() -> typer.Typer:
    """The ledger's commands alone, as ``python -m qledger.ledger`` runs them."""
    app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                      help="qledger's ledger: verify, export, prove.")
    bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks that print ratios to baselines.")
    app.add_typer(bench_app, name="bench")
    register(app, bench_app)
    return app


ArchiveOption = Annotated[Path | None, typer.Option(
    "--archive", envvar="QLEDGER_ARCHIVE", help="Archive directory holding moved artifacts")]


def _progress_verify(source: LedgerSource, start: int, stop: int | None, jobs: int,
                     artifacts: BatchCheck | None = None) -> VerifyReport:
    total = (stop or source.tree_size()) - start + 1
    columns = (TextColumn("verifying"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, transient=True, console=None, disable=not sys.stderr.isatty()) as bar:
        task = bar.add_task("verify", total=max(total, 0))
        return verify(source, start, stop, jobs, lambda n: bar.advance(task, n), artifacts)


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
            beside = artifacts_beside(log)
            if archive is None and beside.is_dir():  # what export-log wrote with the log
                archive = beside
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


def artifacts_beside(log: Path) -> Path:
    """The content-addressed directory export-log writes next to a log (``LOG.artifacts``)."""
    return log.with_name(log.name + ".artifacts")


def export_log(output: Annotated[Path, typer.Option("-o", "--output", help="JSON Lines file")],
               store: StoreOption = None) -> None:
    """Write the whole ledger as JSON Lines, and the store's artifacts beside it (OUTPUT.artifacts,
    by digest), which `qledger verify --log OUTPUT` checks offline."""
    with reported_errors():
        app = open_app(store)
        source = app.source()
        hot = HotArtifacts(app.ledger)
        beside = ArchiveDirectory(artifacts_beside(output))
        try:
            with output.open("w", encoding="utf-8") as fh:
                count = write_log(source, fh)
            copied = 0
            if hot.exists():
                for sha, media_type, _ in hot.listing():
                    data = hot.get(sha)
                    if data is not None:
                        beside.put(data, media_type)
                        copied += 1
        except OSError as exc:
            raise fail(f"cannot write {exc.filename or output}: {exc.strerror}") from None
    typer.echo(f"exported {count} entries to {output}" + (f" and {copied} artifacts to {beside.root}"
                                                          if copied else ""))


@keys_app.command("public")
def keys_public(principal: str) -> None:
    """Print PRINCIPAL's public key (hex), e.g. to pin with verify-bundle --trusted-key."""
    with reported_errors():
        typer.echo(KeyStore.default().load(principal).public.raw.hex())


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


def bench_ledger(store: StoreOption = None,
                 events: Annotated[int, typer.Option(min=100)] = 5000,
                 proof_sizes: Annotated[str, typer.Option(help="Comma-separated tree sizes")]
                 = "100000,1000000",
                 grow_to: Annotated[int, typer.Option(
                     min=0, help="Then grow the ledger to this many entries and measure (e) and (h) "
                                 "again")] = 0) -> None:
    """Throughput of plain eventsourcing vs ledger appends, verify, Ed25519, proofs, verify RSS."""
    from qledger.ledger.bench import run_ledger_bench

    with reported_errors():
        run_ledger_bench(store, events, [int(s) for s in proof_sizes.split(",") if s], grow_to)


