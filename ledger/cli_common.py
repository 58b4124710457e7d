"""What every ``qledger`` command shares: the --store option and how errors become exits."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any
from uuid import UUID

import typer

from qledger.ledger import admin
from qledger.ledger.app import LedgerApp
from qledger.ledger.errors import QledgerError, StoreNotInitialisedError
from qledger.ledger.keys import KeyStore
from qledger.ledger.store.url import resolve_store

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


def open_app(store: str | None, *, initialised: bool = True) -> LedgerApp:
    """The ledger at ``store``.  Unless ``initialised`` is False (``qledger init``), a store
    without a ledger is refused before anything is created: no empty SQLite file is left behind."""
    url = resolve_store(store)
    path = url.env.get("SQLITE_DBNAME", "")
    if initialised and url.kind == "sqlite" and not path.startswith(("file:", ":memory:")) \
            and not Path(path).exists():
        raise StoreNotInitialisedError(f"no ledger at {path}")
    app = admin.open_admin_app(url, KeyStore.default())
    if initialised and app.origin is None:
        raise StoreNotInitialisedError(f"no ledger at {url.url}")
    return app


