"""``qledger templates``: register, list, show and approve circuit templates, each version a
ledger entry signed by its author."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from qledger.ledger.cli_common import StoreOption, fail, open_app, print_json, reported_errors

if TYPE_CHECKING:
    from qledger.ledger.keys import SigningKey

templates_app = typer.Typer(no_args_is_help=True,
                            help="Circuit templates (name@version), signed by their authors.")
AsOption = Annotated[str, typer.Option("--as", help="Whose key signs the entry")]
FormatOption = Annotated[str, typer.Option("--format", help="text or json")]


def register(app: typer.Typer) -> None:
    app.add_typer(templates_app, name="templates")


def _key(principal: str) -> SigningKey:
    from qledger.ledger.keys import KeyStore

    return KeyStore.default().load(principal)


@templates_app.command("add")
def add(file: Path,
        name: Annotated[str, typer.Option(help="The template's name; the version is the next one")],
        description: Annotated[str, typer.Option(help="One line on what it is")] = "",
        source_format: Annotated[str | None, typer.Option(
            "--source-format", help="qasm3, qasm2 or qpy (default: from the file's suffix)")] = None,
        store: StoreOption = None, actor: AsOption = "root") -> None:
    """Register FILE (OpenQASM 3 or 2, or QPY) as the next version of a template, signed by --as."""
    from qledger.runs.templates import register as register_template
    from qledger.runs.templates import template_format

    with reported_errors():
        fmt = template_format(file, source_format)
        try:
            data = file.read_bytes()
        except OSError as exc:
            raise fail(f"cannot read {file}: {exc.strerror}") from None
        found = register_template(open_app(store), _key(actor), name, fmt, data, description)
    typer.echo(f"registered {found['ref']} ({found['qubits']} qubits, parameters "
               f"{found['parameters'] or 'none'}, sha256 {found['sha256']}) by {found['author']}")


@templates_app.command("list")
def list_templates(store: StoreOption = None, output: FormatOption = "text") -> None:
    """Every registered version: reference, author, width, parameters, source digest."""
    from qledger.runs.templates import catalog

    with reported_errors():
        templates = catalog(open_app(store))
    rows = templates.listing() if templates is not None else []
    if output == "json":
        print_json(rows)
        return
    typer.echo(f"{'TEMPLATE':<24} {'AUTHOR':<16} {'QUBITS':>6}  {'PARAMETERS':<20} SHA256")
    for row in rows:
        typer.echo(f"{row['ref']:<24} {row['author']:<16} {row['qubits']:>6}  "
                   f"{','.join(row['parameters']) or '-':<20} {row['sha256'][:16]}")


@templates_app.command("show")
def show(ref: str, store: StoreOption = None, output: FormatOption = "text") -> None:
    """One version (NAME@VERSION): its record, then its source."""
    from qledger.runs.templates import catalog, resolver

    with reported_errors():
        app = open_app(store)
        templates = catalog(app)
        found = templates.get(ref) if templates is not None else None
        source = resolver(app)(ref)
    if found is None or source is None:
        raise fail(f"no registered template {ref} (qledger templates list)")
    if output == "json":
        print_json({**found, **({"source": source.data.decode()} if source.format != "qpy" else {})})
        return
    for key in ("ref", "author", "format", "qubits", "clbits", "parameters", "sha256", "description"):
        typer.echo(f"{key:<12} {found[key]}")
    if source.format != "qpy":
        typer.echo("")
        typer.echo(source.data.decode().rstrip())


@templates_app.command("approve")
def approve(ref: str, rationale: Annotated[str, typer.Option(help="Why it may run on restricted backends")],
            project: Annotated[str, typer.Option(help="Where the approval holds")] = "default",
            store: StoreOption = None, actor: AsOption = "approver") -> None:
    """Approve a template version, by its source digest, for restricted backends: every workflow
    that runs it is admitted there.  Refused for the template's author."""
    from qledger.governance.changes import approve_template

    with reported_errors():
        sha = approve_template(open_app(store), _key(actor), ref, project, rationale)
    typer.echo(f"approved {ref} ({sha}) in {project} by {actor}")
