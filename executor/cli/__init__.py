"""The ``qledger`` command: the one composition root, where the ledger's commands and the
executor's are put together.  Nothing imports this package; each command imports what it
needs when it runs, so ``qledger --help`` loads neither Qiskit nor gRPC.

Exit codes: 0 success, 1 verification failed (or a run failed), 2 could not run, 3 intact but
artifacts missing.
"""

from __future__ import annotations

from typing import Annotated

import typer

from qledger.cli import audit, bench, bundles, governance, runs, service, templates, views
from qledger.ledger import cli as ledger_cli

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="qledger: a signed, hash-chained provenance ledger.")
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks that print ratios to baselines.")
app.add_typer(bench_app, name="bench")


def _print_version(asked: bool) -> None:
    if asked:
        from importlib.metadata import version

        typer.echo(f"qledger {version('qledger-provenance')}")
        raise typer.Exit()


@app.callback()
def _options(version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                                   help="Print the installed version and exit")] = False
             ) -> None:
    """qledger: a signed, hash-chained provenance ledger."""


service.register(app)
ledger_cli.register(app, bench_app)
bundles.register(app)
audit.register(app)
runs.register(app)
views.register(app)
governance.register(app)
templates.register(app)
bench.register(bench_app)


def main() -> None:
    app()
