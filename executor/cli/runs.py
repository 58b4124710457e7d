"""``qledger submit``, ``qledger runs list|show`` and ``qledger demo``: workflow runs from the
command line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from qledger.cli.calls import (
    CAOption,
    CertOption,
    KeyOption,
    ServerNameOption,
    ServerOption,
    Target,
    grpc_errors,
    target,
)
from qledger.cli.views import SinceOption, UntilOption
from qledger.ledger.cli_common import fail, print_json, reported_errors
from qledger.ledger.keys import KeyStore, SigningKey

runs_app = typer.Typer(no_args_is_help=True, help="Inspect workflow runs on a server.")
workflows_app = typer.Typer(no_args_is_help=True, help="The reference workflows qledger ships.")


def register(app: typer.Typer) -> None:
    app.command("submit")(submit)
    app.add_typer(runs_app, name="runs")
    runs_app.command("list")(runs_list)
    runs_app.command("show")(runs_show)
    runs_app.command("watch")(runs_watch)
    runs_app.command("cancel")(runs_cancel)
    runs_app.command("rerun")(runs_rerun)
    app.command("demo")(demo)
    app.add_typer(workflows_app, name="workflows")
    workflows_app.command("list")(workflows_list)
    workflows_app.command("show")(workflows_show)


def workflows_list() -> None:
    """The reference workflows, by the name `qledger submit NAME` and `workflows show` take."""
    from qledger.runs.reference_workflows import names, summary

    rows = [summary(name) for name in names()]
    typer.echo(f"{'NAME':<14} {'WORKFLOW':<18} {'BACKEND':<14} {'CIRCUIT':<12} {'QUBITS':>6}  KIND")
    for r in rows:
        typer.echo(f"{r['name']:<14} {r['workflow']:<18} {r['backend']:<14} {r['circuit']:<12} "
                   f"{r['qubits'] if r['qubits'] is not None else '-':>6}  {r['primitive']}")


def workflows_show(name: str) -> None:
    """A reference workflow's definition (JSON), to submit as it is or to start your own from."""
    print_json(_reference(name))


def _reference(name: str) -> dict[str, Any]:
    from qledger.runs.reference_workflows import load, names

    if name not in names():
        raise fail(f"no reference workflow {name!r}; they are {', '.join(names())}")
    return load(name)


def demo(workdir: Annotated[Path | None, typer.Option(help="Keep the demo store here")] = None) -> None:
    """The main job: submit, execute on Qiskit Aer, verify, export and verify offline (SQLite)."""
    from qledger.cli.demo import run_demo

    with reported_errors():
        if not run_demo(workdir, typer.echo):
            raise fail("demo ledger did not verify", 1)


def submit(workflow: Annotated[str, typer.Argument(
               help="A workflow file (JSON or YAML), or the name of a reference workflow")],
           server: ServerOption = "127.0.0.1:50051",
           principal: Annotated[str, typer.Option("--as", help="Whose key signs the command")] = "client",
           idempotency_key: Annotated[str | None, typer.Option("--idempotency-key")] = None,
           wait: Annotated[bool, typer.Option(help="Watch the run's entries until it ends")] = False,
           ca: CAOption = None, cert: CertOption = None, key: KeyOption = None,
           server_name: ServerNameOption = None) -> None:
    """Sign and submit WORKFLOW (a file, or a reference workflow by name: `qledger workflows
    list`); with --wait, show each step as it is recorded."""
    from qledger.cli.remote import submit_and_watch
    from qledger.runs.workflow import check_shape, read_workflow

    to = target(server, ca, cert, key, server_name)
    with reported_errors(), grpc_errors():
        path = Path(workflow)
        body = read_workflow(path) if path.exists() or path.suffix else _reference(workflow)
        check_shape(body)
        signer = KeyStore.default().load(principal)

        run = submit_and_watch(to, signer, body, idempotency_key, wait, _show_entry)
    _ended(run)


AsCaller = Annotated[str, typer.Option("--as", help="Whose key signs the calls")]
FormatOption = Annotated[str, typer.Option("--format", help="text or json")]


def _format(format_: str) -> str:
    if format_ not in ("text", "json"):
        raise fail("--format is text or json")
    return format_


def run_json(run: Any) -> dict[str, Any]:
    """A run as ``--format json`` shows it."""
    return {"run_id": run.run_id, "workflow": run.workflow, "status": run.status, "steps": list(run.steps),
            "submitted_by": run.submitted_by, "submitted_at": run.submitted_at, "updated_at": run.updated_at,
            "error": run.error, "version": run.version, "rerun_of": run.rerun_of or None,
            "results": json.loads(run.results_json or "{}")}


def runs_list(server: ServerOption = "127.0.0.1:50051",
              limit: Annotated[int, typer.Option(min=1, max=1000)] = 50,
              workflow: Annotated[str | None, typer.Option(help="Workflow name")] = None,
              backend: Annotated[str | None, typer.Option(help="Backend that executed the run")] = None,
              dataset: Annotated[str | None, typer.Option(help="Data version: a dataset's sha256")] = None,
              submitted_by: Annotated[str | None, typer.Option(help="Submitting principal")] = None,
              since: SinceOption = None, until: UntilOption = None,
              store: Annotated[str | None, typer.Option(
                  "--store", help="Read this store instead of asking a server (sqlite:///PATH or "
                  "postgresql://...)")] = None,
              principal: AsCaller = "client", format_: FormatOption = "text", ca: CAOption = None,
              cert: CertOption = None, key: KeyOption = None, server_name: ServerNameOption = None) -> None:
    """The most recent runs you may see, newest first; filters narrow them (all must match)."""
    from qledger.api import qledger_pb2 as pb

    request = pb.ListRunsRequest(limit=limit, workflow=workflow or "", backend=backend or "",
                                 dataset_sha256=dataset or "", submitted_by=submitted_by or "",
                                 since=since.isoformat() if since else "",
                                 until=until.isoformat() if until else "")
    with reported_errors(), grpc_errors():
        if store is not None:
            runs = _stored_runs(store, request)
        else:
            from qledger.cli.remote import list_runs

            runs = list_runs(target(server, ca, cert, key, server_name), request,
                             KeyStore.default().load(principal))
    if _format(format_) == "json":
        print_json([run_json(run) for run in runs])
        return
    typer.echo(f"{'RUN':<36}  {'STATUS':<10} {'WORKFLOW':<24} {'SUBMITTER':<16} SUBMITTED")
    for run in runs:
        typer.echo(f"{run.run_id}  {run.status:<10} {run.workflow:<24} {run.submitted_by:<16} "
                   f"{run.submitted_at[:19].replace('T', ' ')}")


def _stored_runs(store: str, request: Any) -> list[Any]:
    """What ``ListRuns`` answers, read from a store directly (everything in it: a store's reader
    holds its database credentials)."""
    from uuid import UUID

    from qledger.ledger.cli_common import open_app
    from qledger.provenance.lineage_index import find_runs, run_filter
    from qledger.provenance.projections import projection_runner
    from qledger.rpc.entries import run_message

    app = open_app(store)
    wanted = run_filter(request.workflow, request.backend, request.dataset_sha256, request.submitted_by,
                        request.since, request.until, request.limit)
    found = projection_runner(app).read_current("lineage", lambda db: find_runs(db, wanted))
    return [run_message(run) for row in found if (run := app.find(UUID(str(row["run_id"])))) is not None]


def runs_show(run_id: Annotated[str, typer.Argument(help="A run id, or a prefix of one no other run has")],
              server: ServerOption = "127.0.0.1:50051", principal: AsCaller = "client",
              format_: FormatOption = "text", ca: CAOption = None, cert: CertOption = None,
              key: KeyOption = None, server_name: ServerNameOption = None) -> None:
    """A run: its status, steps, times and results (counts, expectation values, energy)."""
    from qledger.cli.remote import get_run

    with reported_errors(), grpc_errors():
        to, signer, full = _named_run(run_id, target(server, ca, cert, key, server_name), principal)
        run = get_run(to, full, signer)
    shown = run_json(run)
    if _format(format_) == "json":
        print_json(shown)
        return
    for name in ("run_id", "workflow", "status", "submitted_by", "submitted_at", "updated_at", "rerun_of",
                 "error"):
        if shown[name]:
            typer.echo(f"{name.replace('_', ' ') + ':':<14}{shown[name]}")
    typer.echo(f"{'steps:':<14}{', '.join(shown['steps']) or '-'}")
    results = shown["results"]
    if "counts" in results:
        counts = json.dumps(results["counts"], sort_keys=True)
        typer.echo(f"{'counts:':<14}{counts}  ({results.get('shots')} shots)")
    if "energy" in results:
        typer.echo(f"{'energy:':<14}{results['energy']} ± {results.get('energy_std')}")
    for pub in results.get("pubs", []):
        start, stop = pub["bindings"]
        what = (f"evs {json.dumps(pub['evs'])} stds {json.dumps(pub['stds'])}" if "evs" in pub
                else f"counts in artifact sha256:{pub['result_sha256']}")
        typer.echo(f"{'pub ' + str(pub['pub']) + ':':<14}bindings {start}..{stop - 1}: {what}")


def _named_run(run_id: str, to: Target, principal: str) -> tuple[Target, SigningKey, str]:
    """What a command about one run needs: the server, the caller's key, the run's full id."""
    signer = KeyStore.default().load(principal)
    return to, signer, _resolve(to, run_id, signer)


def _resolve(to: Any, prefix: str, signer: Any) -> str:
    """The full id of the one run ``prefix`` starts (the 1000 most recent runs are searched)."""
    from uuid import UUID

    from qledger.api import qledger_pb2 as pb
    from qledger.cli.remote import list_runs

    try:
        return str(UUID(prefix))
    except ValueError:
        pass
    if len(prefix) < 4 or any(c not in "0123456789abcdef-" for c in prefix.lower()):
        raise fail(f"{prefix!r} is neither a run id nor a prefix of one (at least 4 hex digits)")
    recent = list_runs(to, pb.ListRunsRequest(limit=1000), signer)
    found = [run.run_id for run in recent if run.run_id.startswith(prefix.lower())]
    if len(found) != 1:
        raise fail(f"{len(found)} of your recent runs start with {prefix!r}" + (
            f": {', '.join(found[:5])}" if found else "") + "; give more of the id")
    return found[0]


def runs_watch(run_id: Annotated[str, typer.Argument(help="A run id or a unique prefix")],
               server: ServerOption = "127.0.0.1:50051", principal: AsCaller = "client",
               ca: CAOption = None, cert: CertOption = None, key: KeyOption = None,
               server_name: ServerNameOption = None) -> None:
    """Follow a run's entries as they are recorded, until it ends (WatchRun); exit 1 if it failed."""
    from qledger.cli.remote import get_run, watch

    with reported_errors(), grpc_errors():
        to, signer, full = _named_run(run_id, target(server, ca, cert, key, server_name), principal)
        watch(to, full, signer, _show_entry)
        run = get_run(to, full, signer)
    _ended(run)


def runs_cancel(run_id: Annotated[str, typer.Argument(help="A run id or a unique prefix")],
                reason: Annotated[str, typer.Option(help="Why, recorded in the Cancelled entry")],
                server: ServerOption = "127.0.0.1:50051", principal: AsCaller = "client",
                ca: CAOption = None, cert: CertOption = None, key: KeyOption = None,
                server_name: ServerNameOption = None) -> None:
    """Cancel a run (CancelRun, a command signed by --as): recorded, with the reason."""
    from qledger.cli.remote import cancel

    with reported_errors(), grpc_errors():
        to, signer, full = _named_run(run_id, target(server, ca, cert, key, server_name), principal)
        run = cancel(to, full, reason, signer)
    typer.echo(f"run {run.run_id}: {run.status}" + (f" ({run.error})" if run.error else ""))


def runs_rerun(run_id: Annotated[str, typer.Argument(help="A run id or a unique prefix")],
               server: ServerOption = "127.0.0.1:50051", principal: AsCaller = "client",
               ca: CAOption = None, cert: CertOption = None, key: KeyOption = None,
               server_name: ServerNameOption = None) -> None:
    """Replay a run's recorded workflow (RerunWorkflow) and wait for it; prints the new run."""
    from qledger.cli.remote import get_run, rerun_and_wait

    with reported_errors(), grpc_errors():
        to, signer, full = _named_run(run_id, target(server, ca, cert, key, server_name), principal)
        again = rerun_and_wait(to, signer, full)
        run = get_run(to, again, signer)
    _ended(run)


def _show_entry(entry: Any) -> None:
    from qledger.ledger import dsse
    from qledger.ledger.content import EntryContent

    content = EntryContent.from_bytes(dsse.parse(entry.envelope).payload)
    step = content.payload.get("step", "")
    typer.echo(f"  {entry.position:>8}  {entry.event_type.rsplit('.', 1)[-1]:<13} {step:<20} "
               f"signed by {content.principal}")


def _ended(run: Any) -> None:
    typer.echo(f"run {run.run_id}: {run.status}" + (f" ({run.error})" if run.error else ""))
    if run.status == "failed":
        raise typer.Exit(1)
