"""``qledger`` commands that read projections and runs: lineage, report, query, ops, projections.

Each imports what it needs when it runs, so ``qledger --help`` does not load Qiskit.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any
from uuid import UUID

import typer

from qledger.cli.calls import CAOption, CertOption, KeyOption, ServerNameOption, Target, grpc_errors, target
from qledger.ledger.cli_common import StoreOption, fail, open_app, parse_run_id, print_json, reported_errors

if TYPE_CHECKING:
    from prov.model import ProvDocument

    from qledger.ledger.app import LedgerApp
    from qledger.ledger.projection import ProjectionDB, ProjectionRunner

projections_app = typer.Typer(no_args_is_help=True, help="Read models rebuilt from the log.")
query_app = typer.Typer(no_args_is_help=True, help="Lineage queries over the lineage projection, as JSON.")

SinceOption = Annotated[datetime | None, typer.Option(help="From this time (ISO 8601, UTC if no offset)")]
UntilOption = Annotated[datetime | None, typer.Option(help="Before this time (ISO 8601)")]


def register(app: typer.Typer) -> None:
    app.add_typer(projections_app, name="projections")
    app.add_typer(query_app, name="query")
    app.command("lineage")(lineage)
    app.command("report")(report_command)
    app.command("ops")(ops)


def _runner(app: LedgerApp) -> ProjectionRunner:
    """The projections, their tables made if missing (for rebuild and status)."""
    from qledger.provenance.projections import projection_runner

    runner = projection_runner(app)
    runner.ensure_tables()
    return runner


def _current(app: LedgerApp, projection: str, query: Callable[[ProjectionDB], Any]) -> Any:
    """``query`` on ``projection`` once it has caught up with the log."""
    from qledger.provenance.projections import projection_runner

    return projection_runner(app).read_current(projection, query)


def _run_entries(app: LedgerApp, run_id: UUID) -> list[tuple[int, bytes]]:
    rows = app.source().stream_entries(run_id, 0)
    if not rows:
        raise fail(f"no run {run_id} in this ledger")
    return [(r.position, r.state or b"") for r in rows]


def _write(text: str, output: Path | None) -> None:
    if output is None:
        typer.echo(text, nl=not text.endswith("\n"))
        return
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise fail(f"cannot write {output}: {exc.strerror}") from None
    typer.echo(f"wrote {output} ({len(text.encode())} bytes)")


def _picture(document: ProvDocument, format_: str) -> str:
    from qledger.provenance.lineage import lineage_dot
    from qledger.provenance.render import dot_to_svg

    if format_ == "prov-json":
        return str(document.serialize(format="json", indent=2))
    dot = lineage_dot(document)
    return dot if format_ == "dot" else dot_to_svg(dot)


def lineage(reference: Annotated[str, typer.Argument(
                help="Run id, or an artifact: node id (qledger:dataset/<sha256>, ...) or sha256")],
            store: StoreOption = None,
            format_: Annotated[str, typer.Option("--format", help="prov-json, dot or svg")] = "prov-json",
            output: Annotated[Path | None, typer.Option("-o", "--output")] = None) -> None:
    """W3C PROV lineage of a run (from its entries) or of an artifact (everything it came from
    and everything derived from it, across runs)."""
    from qledger.provenance.lineage import lineage_document, prov_document
    from qledger.provenance.lineage_index import artifact_lineage

    if format_ not in ("prov-json", "dot", "svg"):
        raise fail("--format must be prov-json, dot or svg")
    with reported_errors():
        app = open_app(store)
        try:
            run_id: UUID | None = UUID(reference)
        except ValueError:
            run_id = None
        if run_id is not None:
            document = lineage_document(app.require_origin(), _run_entries(app, run_id))
        else:
            graph = _current(app, "lineage", lambda db: artifact_lineage(db, reference))
            document = prov_document(graph.nodes, graph.relations)
        _write(_picture(document, format_), output)


def report_command(
    run: Annotated[str, typer.Argument(help="Run id")], store: StoreOption = None,
    against: Annotated[str | None, typer.Option(help="Compare with this run")] = None,
    rerun: Annotated[bool, typer.Option(help="Rerun RUN on --server and compare with the rerun")] = False,
    server: Annotated[str | None, typer.Option(help="Ask this server (host:port) instead of --store")] = None,
    principal: Annotated[str, typer.Option("--as", help="Whose key signs the rerun")] = "client",
    format_: Annotated[str, typer.Option("--format", help="md, json or html")] = "md",
    output: Annotated[Path | None, typer.Option("-o", "--output")] = None,
    ca: CAOption = None, cert: CertOption = None, key: KeyOption = None, server_name: ServerNameOption = None,
) -> None:
    """Reproducibility report: RUN's recorded environment, and a comparison --against RUN2 or with
    a fresh --rerun.  HTML is one self-contained file with the lineage picture and both runs'
    distributions."""
    from qledger.provenance.report import to_markdown

    if format_ not in ("md", "json", "html"):
        raise fail("--format must be md, json or html")
    if rerun and (against is not None or server is None):
        raise fail("--rerun needs --server (the executor runs it) and excludes --against")
    with reported_errors():
        if server is not None:
            data, document = _remote_report(target(server, ca, cert, key, server_name), run, against, rerun,
                                            principal)
        else:
            data, document = _local_report(store, run, against)
        if format_ == "json":
            text = json.dumps(data, indent=2, sort_keys=True) + "\n"
        elif format_ == "md":
            text = to_markdown(data)
        else:
            from qledger.provenance.render import report_html

            text = report_html(data, _picture(document, "svg"))
        _write(text, output)


def _local_report(store: str | None, run: str, against: str | None) -> tuple[dict[str, Any], ProvDocument]:
    from qledger.provenance.lineage import lineage_document
    from qledger.provenance.report import report, run_facts

    app = open_app(store)
    facts = []
    for text in (run, against):
        if text is not None:
            facts.append(run_facts([state for _, state in _run_entries(app, parse_run_id(text))]))
    document = lineage_document(app.require_origin(), _run_entries(app, parse_run_id(run)))
    return report(facts[0], facts[1] if len(facts) > 1 else None), document


def _remote_report(server: Target, run: str, against: str | None, rerun: bool, principal: str
                   ) -> tuple[dict[str, Any], ProvDocument]:
    from prov.model import ProvDocument

    from qledger.cli.remote import remote_report, rerun_and_wait
    from qledger.ledger.keys import KeyStore

    key = KeyStore.default().load(principal)
    with grpc_errors():
        if rerun:
            against = rerun_and_wait(server, key, run)
        data, prov = remote_report(server, run, against, key)
    return data, ProvDocument.deserialize(content=json.dumps(prov), format="json")


# -- projections -------------------------------------------------------------------------

@projections_app.command("rebuild")
def projections_rebuild(names: Annotated[list[str] | None, typer.Argument(help="Default: all")] = None,
                        store: StoreOption = None) -> None:
    """Empty the projections and replay the whole log into them, a page at a time."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn

    with reported_errors():
        runner = _runner(open_app(store))
        for projection in runner.select(names or None):
            columns = (TextColumn(f"rebuild {projection.name}"), BarColumn(), MofNCompleteColumn(),
                       TimeRemainingColumn())
            with Progress(*columns, transient=True) as bar:
                task = bar.add_task(projection.name, total=None)

                def advance(done: int, total: int, task: TaskID = task) -> None:
                    bar.update(task, completed=done, total=total)

                started = time.perf_counter()
                count = runner.rebuild([projection.name], progress=advance)
            seconds = time.perf_counter() - started
            typer.echo(f"rebuilt {projection.name}: {count} entries in {seconds:.2f}s "
                       f"({count / seconds if seconds else 0:,.0f} entries/s)")


@projections_app.command("status")
def projections_status(store: StoreOption = None) -> None:
    """Each projection's last processed position, how far it is behind the ledger, and the
    entries it skipped because it could not apply them."""
    with reported_errors():
        app = open_app(store)
        runner = _runner(app)
        size = app.tree_size()
        skipped = runner.skipped()
        print_json({name: {"position": position, "lag": size - position,
                           "skipped": [{"position": p, "error": e} for n, p, e in skipped if n == name]}
                    for name, position in runner.positions().items()})


# -- queries ------------------------------------------------------------------------------

def _walk(reference: str, store: str | None, direction: str) -> None:
    from qledger.provenance.lineage_index import find_nodes, walk

    with reported_errors():
        graph = _current(open_app(store), "lineage",
                         lambda db: walk(db, find_nodes(db, reference), direction))
        print_json([{"id": n.id, "kind": n.kind, "ledger_position": n.position, "sha256": n.sha256}
                    for n in graph.nodes])


@query_app.command("ancestors")
def query_ancestors(reference: Annotated[str, typer.Argument(help="Node id or artifact sha256")],
                    store: StoreOption = None) -> None:
    """Everything the artifact came from: activities, inputs, agents."""
    _walk(reference, store, "ancestors")


@query_app.command("descendants")
def query_descendants(reference: Annotated[str, typer.Argument(help="Node id or artifact sha256")],
                      store: StoreOption = None) -> None:
    """Everything derived from the artifact, in any run."""
    _walk(reference, store, "descendants")


def ops(store: StoreOption = None,
        by: Annotated[str, typer.Option(help="backend, workflow or variant (canary)")] = "backend",
        since: SinceOption = None, until: UntilOption = None,
        format_: Annotated[str, typer.Option("--format", help="table or json")] = "table") -> None:
    """Operations view: runs, success rate, retries, queue and execution time percentiles, shots,
    transpiled depth and gate count per day, per backend or per workflow."""
    from qledger.provenance.operations import operation_rows, operations_view

    if by not in ("backend", "workflow", "variant") or format_ not in ("table", "json"):
        raise fail("--by is backend, workflow or variant; --format is table or json")
    with reported_errors():
        rows = _current(open_app(store), "operations", lambda db: operation_rows(db, since, until))
        view = operations_view(rows, by)
    if format_ == "json":
        print_json(view)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"operations by {by}")
    for column in (by, "runs", "success", "retries", "shots", "queue p50/p95 ms", "exec p50/p95/p99 ms",
                   "mean TVD", "depth (latest day)", "gates (latest day)"):
        table.add_column(column)
    for g in view:
        latest = g["circuits_by_day"][-1] if g["circuits_by_day"] else {}
        table.add_row(g[by], str(g["runs"]), _fmt(g["success_rate"]), str(g["retries"]), str(g["shots"]),
                      f"{_fmt(g['queue_ms_p50'])}/{_fmt(g['queue_ms_p95'])}",
                      f"{_fmt(g['execution_ms_p50'])}/{_fmt(g['execution_ms_p95'])}/"
                      f"{_fmt(g['execution_ms_p99'])}", _fmt(g["mean_tvd"]),
                      _fmt(latest.get("mean_depth")), _fmt(latest.get("mean_gate_count")))
    Console(width=160).print(table)


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:g}" if isinstance(value, float) else str(value)
