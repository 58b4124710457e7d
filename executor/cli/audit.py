"""``qledger audit``: an auditor's saved checkpoint, advanced against a server only when the
server proves that its current tree extends it.  The state is one file the auditor keeps; no
database is needed."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Annotated

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
from qledger.ledger.cli_common import fail, reported_errors
from qledger.ledger.keys import KeyStore


def register(app: typer.Typer) -> None:
    app.command("audit")(audit)


def audit(state: Annotated[Path, typer.Option(
              help="Your saved checkpoint: read if it exists, replaced once the server's tree is "
              "proven to extend it")],
          checkpoint_key: Annotated[Path, typer.Option(
              help="The ledger's checkpoint key you pinned (hex, or a C2SP verifier key)")],
          server: ServerOption = "127.0.0.1:50051",
          principal: Annotated[str | None, typer.Option(
              "--as", help="Whose key signs the calls (a principal with a role on the server)")] = None,
          ca: CAOption = None, cert: CertOption = None, key: KeyOption = None,
          server_name: ServerNameOption = None) -> None:
    """Check that the server's current checkpoint extends the one you saved (an RFC 9162
    consistency proof), then save it.  Exit 0 consistent, 1 not (history rewritten, rolled back
    or signed by another key), 2 could not check."""
    from qledger.cli.remote import checkpoint_since
    from qledger.ledger.errors import CheckpointTrustError, InconsistentHistoryError
    from qledger.ledger.saved_checkpoint import (
        check_extension,
        checkpoint_note,
        pinned_checkpoint_key,
        trusted,
    )

    with reported_errors(), grpc_errors():
        try:
            pinned, signer = pinned_checkpoint_key(checkpoint_key.read_text())
            saved_text = state.read_text() if state.exists() else None
        except OSError as exc:
            raise fail(f"cannot read {exc.filename}: {exc.strerror}") from None
        caller = KeyStore.default().load(principal) if principal else None
        try:
            saved = trusted(checkpoint_note(saved_text), pinned, signer) if saved_text is not None else None
            note, path = checkpoint_since(target(server, ca, cert, key, server_name), caller,
                                          saved.checkpoint.tree_size if saved else None)
            current = trusted(note, pinned, signer, saved.checkpoint.origin if saved else None)
            if saved is None:
                verdict = f"first checkpoint saved: {current.checkpoint.tree_size} entries"
            else:
                old, new = saved.checkpoint.tree_size, current.checkpoint.tree_size
                if new < old:
                    raise InconsistentHistoryError(f"the server shows {new} entries, fewer than the {old} "
                                                   "you saved")
                verdict = check_extension(saved, current, path).describe()
        except (CheckpointTrustError, InconsistentHistoryError) as exc:
            raise fail(f"INCONSISTENT: {exc}", 1) from None
        checkpoint = current.checkpoint
        try:
            state.write_text(json.dumps({
                "origin": checkpoint.origin, "tree_size": checkpoint.tree_size,
                "root_hash": base64.b64encode(checkpoint.root_hash).decode(),
                "note": note}, indent=2, sort_keys=True) + "\n")
        except OSError as exc:
            raise fail(f"cannot write {exc.filename or state}: {exc.strerror}") from None
    typer.echo(f"CONSISTENT: the server's tree {verdict}; saved to {state}")
