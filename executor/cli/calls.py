"""How a command calls a server: where it is (``--server``), how to reach it (TLS or mutual TLS,
grpcurl's flags and ``QLEDGER_*`` variables), and a failed call as a one-line exit."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from qledger.ledger.cli_common import fail

if TYPE_CHECKING:
    import grpc

    from qledger.ledger.keys import SigningKey

ServerOption = Annotated[str, typer.Option("--server", envvar="QLEDGER_SERVER",
                                           help="host:port of a qledger server")]
CAOption = Annotated[Path | None, typer.Option(
    "--ca", envvar="QLEDGER_CA", help="The server's CA certificate (PEM): call over TLS")]
CertOption = Annotated[Path | None, typer.Option(
    "--cert", envvar="QLEDGER_CLIENT_CERT", help="Client certificate (PEM): mutual TLS, with --key")]
KeyOption = Annotated[Path | None, typer.Option(
    "--key", envvar="QLEDGER_CLIENT_KEY", help="The client certificate's private key (PEM)")]
ServerNameOption = Annotated[str | None, typer.Option(
    "--server-name", envvar="QLEDGER_SERVER_NAME", help="The name to expect in the server's certificate")]


@dataclass(frozen=True)
class Target:
    """A server and how to reach it."""

    address: str
    root_ca: bytes | None = None
    cert: bytes | None = None
    key: bytes | None = None
    server_name: str | None = None

    def channel(self, signer: SigningKey | None = None) -> grpc.Channel:
        """A channel to the server, every call signed by ``signer`` when given."""
        from qledger.rpc.channel import client_channel

        return client_channel(self.address, self.root_ca, self.cert, self.key, self.server_name, signer)


def target(server: str, ca: Path | None, cert: Path | None, key: Path | None,
           server_name: str | None) -> Target:
    """The options of a command that calls a server, checked and read."""
    if (cert is None) != (key is None):
        raise fail("--cert and --key go together (QLEDGER_CLIENT_CERT, QLEDGER_CLIENT_KEY)")
    if cert is not None and ca is None:
        raise fail("--cert needs --ca, the CA certificate of the server (QLEDGER_CA)")
    try:
        material = [path.read_bytes() if path else None for path in (ca, cert, key)]
    except OSError as exc:
        raise fail(f"cannot read {exc.filename}: {exc.strerror}") from None
    return Target(server, material[0], material[1], material[2], server_name)


@contextmanager
def grpc_errors() -> Iterator[None]:
    """A failed call to a server becomes ``STATUS: details`` and exit 2."""
    import grpc

    try:
        yield
    except grpc.RpcError as exc:
        raise fail(f"{exc.code().name}: {exc.details()}") from None
