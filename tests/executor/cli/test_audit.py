"""``qledger audit`` and ``verify-bundle --saved-checkpoint``: an auditor's saved checkpoint,
checked against a live server and against a bundle, with no database on the auditor's side."""

from __future__ import annotations

import base64
import json
from pathlib import Path

from qledger.ledger.admin import CHECKPOINTER
from qledger.ledger.checkpoint import Checkpoint, parse_note
from qledger.ledger.keys import KeyStore, SigningKey
from qledger.runs.reference_workflows import BELL
from tests.conftest import ONLY_SQLITE
from tests.executor.cli.test_cli_serve import in_process
from tests.executor.conftest import Service, ServiceFactory

pytestmark = ONLY_SQLITE  # what is tested does not depend on the store (time budget)


def test_audit_advances_a_saved_checkpoint_only_along_one_history(service: Service, tmp_path: Path) -> None:
    home, state = service.home, tmp_path / "saved-checkpoint.json"
    checkpointer = KeyStore(home).load(CHECKPOINTER)
    pin = tmp_path / "checkpoint.pub"
    pin.write_text(in_process(home, "keys", "public", CHECKPOINTER).stdout)

    def audit(key_file: Path = pin) -> tuple[int, str]:
        done = in_process(home, "audit", "--state", str(state), "--checkpoint-key", str(key_file),
                          "--server", service.running.address)
        return done.returncode, (done.stdout + done.stderr).strip()

    assert audit() == (0, f"CONSISTENT: the server's tree first checkpoint saved: {service.app.tree_size()} "
                          f"entries; saved to {state}")
    first = json.loads(state.read_text())
    assert first["tree_size"] == service.app.tree_size() and parse_note(first["note"]).signed_by(
        service.origin, checkpointer.public)
    service.watch(service.submit(BELL).run.run_id)
    code, said = audit()
    assert code == 0 and f"extends the saved tree of {first['tree_size']} entries to " in said, said
    second = json.loads(state.read_text())
    assert second["tree_size"] > first["tree_size"]

    def saved(checkpoint: Checkpoint, key: SigningKey = checkpointer) -> None:
        state.write_text(json.dumps({"note": checkpoint.sign(key)}))

    # A saved tree the server's history does not extend: signed by the right key, another root.
    saved(Checkpoint(service.origin, first["tree_size"], bytes(32)))
    code, said = audit()
    assert code == 1 and said.startswith("qledger: INCONSISTENT: the tree of ") and "does not extend" in said
    assert json.loads(state.read_text())["note"] != second["note"]  # a failed audit saves nothing
    # More entries saved than the server now shows: a rollback.
    saved(Checkpoint(service.origin, service.app.tree_size() + 5, bytes(32)))
    code, said = audit()
    assert code == 1 and "fewer than the" in said
    # A checkpoint signed by a key other than the pinned one.
    saved(Checkpoint(service.origin, 1, bytes(32)), SigningKey.generate("mallory"))
    code, said = audit()
    assert code == 1 and "not signed by the pinned key" in said
    # The pinned key missing or malformed: the check cannot run.
    assert audit(tmp_path / "absent.pub")[0] == 2
    (tmp_path / "bad.pub").write_text("not a key")
    code, said = audit(tmp_path / "bad.pub")
    assert code == 2 and "checkpoint key is hex" in said and "Traceback" not in said


def test_verify_bundle_against_a_saved_checkpoint(service_factory: ServiceFactory, tmp_path: Path) -> None:
    service = service_factory(export=True)
    home, store = service.home, service.app.store.url
    pin, exporter_pin = tmp_path / "checkpoint.pub", tmp_path / "exporter.pub"
    pin.write_text(in_process(home, "keys", "public", CHECKPOINTER).stdout)
    exporter_pin.write_text(in_process(home, "keys", "public", "exporter").stdout)
    old_run = service.submit(BELL).run.run_id
    service.watch(old_run)
    state = tmp_path / "saved.json"
    assert in_process(home, "audit", "--state", str(state), "--checkpoint-key", str(pin),
                      "--server", service.running.address).returncode == 0
    saved_size = json.loads(state.read_text())["tree_size"]
    service.watch(service.submit(BELL).run.run_id)
    bundle = tmp_path / "bundle.json"
    assert in_process(home, "export-bundle", old_run, "-o", str(bundle), "--store", store).returncode == 0
    statement = json.loads(base64.b64decode(json.loads(bundle.read_text())["payload"]))
    bundle_size = parse_note(statement["predicate"]["checkpoint"]).checkpoint.tree_size
    assert bundle_size > saved_size

    def verify(*extra: str) -> tuple[int, str]:
        done = in_process(home, "verify-bundle", str(bundle), "--trusted-key", str(exporter_pin),
                          "--saved-checkpoint", str(state), "--checkpoint-key", str(pin), *extra)
        return done.returncode, (done.stdout + done.stderr).strip()

    code, said = verify()
    assert code == 2 and f"qledger proof consistency {saved_size} {bundle_size}" in said
    proof = tmp_path / "proof.json"
    proof.write_text(in_process(home, "proof", "consistency", str(saved_size), str(bundle_size),
                                "--store", store).stdout)
    code, said = verify("--consistency-proof", str(proof))
    assert code == 0 and said.startswith("VALID: ") and (
        f"its checkpoint extends the saved tree of {saved_size} entries to {bundle_size}") in said, said
    # The saved checkpoint of another history: the bundle is not of the tree the auditor saw.
    state.write_text(json.dumps({"note": Checkpoint(service.origin, saved_size, bytes(32)).sign(
        KeyStore(home).load(CHECKPOINTER))}))
    code, said = verify("--consistency-proof", str(proof))
    assert code == 1 and said.startswith("qledger: INVALID: the tree of"), said
