"""How a command calls a server: the ``--server`` option, and a failed call as a one-line exit."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import typer

from qledger.ledger.cli_common import fail

ServerOption = Annotated[str, typer.Option("--server", help="host:port of a qledger server")]


@contextmanager
def grpc_errors() -> Iterator[None]:
    """A failed call to a server becomes ``STATUS: details`` and exit 2."""
    import grpc

    try:
        yield
    except grpc.RpcError as exc:
        raise fail(f"{exc.code().name}: {exc.details()}") from None

