"""``qledger submit``, ``qledger runs list|show`` and ``qledger demo``: workflow runs from the
command line."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

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
from qledger.ledger.cli_common import fail, print_json, reported_errors
from qledger.ledger.keys import KeyStore

runs_app = typer.Typer(no_args_is_help=True, help="Inspect workflow runs on a server.")
workflows_app = typer.Typer(no_args_is_help=True, help="The reference workflows qledger ships.")


def register(app: typer.Typer) -> None:
    app.command("submit")(submit)
    app.add_typer(runs_app, name="runs")
    runs_app.command("list")(runs_list)
    runs_app.command("show")(runs_show)
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

        def show(entry: Any) -> None:
            from qledger.ledger import dsse
            from qledger.ledger.content import EntryContent

            content = EntryContent.from_bytes(dsse.parse(entry.envelope).payload)
            step = content.payload.get("step", "")
            typer.echo(f"  {entry.position:>8}  {entry.event_type.rsplit('.', 1)[-1]:<13} {step:<20} "
                       f"signed by {content.principal}")

        run = submit_and_watch(to, signer, body, idempotency_key, wait, show)
    typer.echo(f"run {run.run_id}: {run.status}" + (f" ({run.error})" if run.error else ""))
    if run.status == "failed":
        raise typer.Exit(1)


AsCaller = Annotated[str, typer.Option("--as", help="Whose key signs the calls")]


def runs_list(server: ServerOption = "127.0.0.1:50051",
              limit: Annotated[int, typer.Option(min=1, max=1000)] = 50,
              principal: AsCaller = "client", ca: CAOption = None, cert: CertOption = None,
              key: KeyOption = None, server_name: ServerNameOption = None) -> None:
    """The most recent runs you may see, newest first: id, status, workflow, submitter."""
    from qledger.cli.remote import list_runs

    with reported_errors(), grpc_errors():
        to = target(server, ca, cert, key, server_name)
        runs = list_runs(to, limit, KeyStore.default().load(principal))
    for run in runs:
        typer.echo(f"{run.run_id}  {run.status:<10} {run.workflow:<24} {run.submitted_by}")


def runs_show(run_id: str, server: ServerOption = "127.0.0.1:50051",
              principal: AsCaller = "client", ca: CAOption = None, cert: CertOption = None,
              key: KeyOption = None, server_name: ServerNameOption = None) -> None:
    from qledger.cli.remote import get_run

    with reported_errors(), grpc_errors():
        to = target(server, ca, cert, key, server_name)
        run = get_run(to, run_id, KeyStore.default().load(principal))
    print_json({"run_id": run.run_id, "workflow": run.workflow, "status": run.status,
                 "steps": list(run.steps), "submitted_by": run.submitted_by, "error": run.error,
                 "version": run.version})
