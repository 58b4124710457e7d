"""``qledger export-bundle`` and ``qledger verify-bundle``: a run's signed lineage bundle, out of
the store and checked offline."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from qledger.ledger import admin
from qledger.ledger.cli_common import StoreOption, fail, open_app, reported_errors
from qledger.ledger.keys import KeyStore


def register(app: typer.Typer) -> None:
    app.command("export-bundle")(export_bundle_command)
    app.command("verify-bundle")(verify_bundle_command)


def export_bundle_command(run: Annotated[str, typer.Argument(
                              help="Run id, or an artifact (node id or sha256) of the run")],
                          output: Annotated[Path, typer.Option("-o", "--output")],
                          store: StoreOption = None) -> None:
    """Write the signed lineage bundle (in-toto Statement in DSSE) of the run, or of the run that
    generated the artifact, for offline verification."""
    from qledger.provenance.bundle_export import export_recorded
    from qledger.provenance.projections import projection_runner, resolve_run

    with reported_errors():
        ledger = open_app(store)
        stream_id = resolve_run(ledger, projection_runner(ledger), run)
        ledger.require_origin()
        keys = KeyStore.default()
        exporter = admin.export_key(ledger, keys)
        data = export_recorded(ledger, stream_id, exporter, keys.load(admin.CHECKPOINTER))
        try:
            output.write_bytes(data)
        except OSError as exc:
            raise fail(f"cannot write {output}: {exc.strerror}") from None
    typer.echo(f"bundle for run {run}: {output} ({len(data)} bytes)")


def verify_bundle_command(
    bundle: Path,
    trusted_key: Annotated[Path | None, typer.Option(help="File with the export key's public key (hex)")]
    = None,
    saved_checkpoint: Annotated[Path | None, typer.Option(
        help="A checkpoint you saved earlier (qledger audit --state, or qledger checkpoint): the "
        "bundle's checkpoint must be consistent with it")] = None,
    consistency_proof: Annotated[Path | None, typer.Option(
        help="Consistency proof between the two checkpoints' sizes (qledger proof consistency M N)")]
    = None,
    checkpoint_key: Annotated[Path | None, typer.Option(
        help="The ledger's checkpoint key (hex or C2SP verifier key) that signed both checkpoints")]
    = None,
) -> None:
    """Check a bundle offline: outer signature, entries, keys, inclusion proofs, checkpoint; with
    --saved-checkpoint, also that the bundle's checkpoint and the saved one are of one history.
    Exit 0 valid, 1 invalid, 2 unreadable, 4 self-consistent but not checked against a pinned key."""
    from qledger.ledger.errors import CheckpointTrustError, InconsistentHistoryError
    from qledger.ledger.keys import PublicKey
    from qledger.provenance.bundle import BundleInvalidError, verify_bundle

    if saved_checkpoint is not None and checkpoint_key is None:
        raise fail("--saved-checkpoint needs --checkpoint-key, the key that signed it")
    with reported_errors():
        try:
            data = bundle.read_bytes()
            pinned = PublicKey(bytes.fromhex(trusted_key.read_text().strip())) if trusted_key else None
        except OSError as exc:
            raise fail(f"cannot read {exc.filename}: {exc.strerror}") from None
        except ValueError:
            raise fail("--trusted-key must hold a hex Ed25519 public key") from None

        try:
            report = verify_bundle(data, pinned)
            extension = (_against_saved(report.checkpoint_note, saved_checkpoint, consistency_proof,
                                        checkpoint_key) if saved_checkpoint and checkpoint_key else "")
        except (BundleInvalidError, CheckpointTrustError, InconsistentHistoryError) as exc:
            raise fail(f"INVALID: {exc}", 1) from None
    proven = (f"run {report.stream_id}, {report.entries} entries proven against the checkpoint of size "
              f"{report.tree_size}, {len(report.subjects)} subjects{extension}")
    if not report.pinned:
        # Like cosign without a key: a bundle any ledger could have made checks out against itself.
        typer.echo(f"UNPINNED: self-consistent only: {proven}; signed by export key "
                   f"{report.signer_key_id} ({report.signer or 'unnamed'}) of ledger {report.origin!r}, "
                   "which you have not pinned: pass --trusted-key FILE with that ledger's export key "
                   "(`qledger keys public exporter` on it)")
        raise typer.Exit(4)
    typer.echo(f"VALID: {proven}")


def _against_saved(note: str, saved: Path, proof: Path | None, key_file: Path) -> str:
    """How the bundle's checkpoint relates to the saved one (raises if they are not one history)."""
    from qledger.ledger.saved_checkpoint import (
        check_extension,
        checkpoint_note,
        pinned_checkpoint_key,
        proof_path,
        trusted,
    )

    try:
        key, signer = pinned_checkpoint_key(key_file.read_text())
        saved_note = trusted(checkpoint_note(saved.read_text()), key, signer)
        shown = trusted(note, key, signer, saved_note.checkpoint.origin)
        sizes = sorted((saved_note.checkpoint.tree_size, shown.checkpoint.tree_size))
        if sizes[0] == sizes[1]:
            path: list[bytes] = []
        elif proof is None:
            raise fail(f"the checkpoints differ in size ({sizes[0]} and {sizes[1]}): pass "
                       f"--consistency-proof with `qledger proof consistency {sizes[0]} {sizes[1]}`")
        else:
            path = proof_path(proof.read_text(), *sizes)
    except OSError as exc:
        raise fail(f"cannot read {exc.filename}: {exc.strerror}") from None
    return "; its checkpoint " + check_extension(saved_note, shown, path).describe()
