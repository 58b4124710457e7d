"""What every ``qledger`` command shares: the --store option and how errors become exits."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any
from uuid import UUID

import typer

from qledger.ledger import admin
from qledger.ledger.app import LedgerApp
from qledger.ledger.errors import QledgerError
from qledger.ledger.keys import KeyStore

StoreOption = Annotated[str | None, typer.Option(
    "--store", help="sqlite:///PATH or postgresql://USER@HOST/DB; default $QLEDGER_STORE, "
    "then sqlite:///./qledger.db")]

def fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"qledger: {message}", err=True)
    return typer.Exit(code)


@contextmanager
def reported_errors() -> Iterator[None]:
    """Turn an expected error into a one-line reason and exit 2; tracebacks are for bugs."""
    try:
        yield
    except QledgerError as exc:
        raise fail(exc.one_line()) from None


def print_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, sort_keys=True))


def parse_run_id(text: str) -> UUID:
    try:
        return UUID(text)
    except ValueError:
        raise fail(f"{text!r} is not a run id") from None


def open_app(store: str | None) -> LedgerApp:
    return admin.open_admin_app(store, KeyStore.default())


