"""Checkpoints and proofs checked by another implementation: the Go packages of
golang.org/x/mod/sumdb (``note`` for C2SP signed notes, ``tlog`` for RFC 6962/9162 proofs),
from Debian's golang-go and golang-golang-x-mod-dev, built offline.  Every inclusion proof of
every entry in every tree size of a small ledger, and every consistency proof between them,
must check there; changed ones must not."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from qledger.ledger.admin import CHECKPOINTER
from qledger.ledger.app import LedgerApp
from qledger.ledger.checkpoint import verifier_key
from qledger.ledger.keys import KeyStore
from tests.conftest import skip_or_fail
from tests.ledger.helpers import make_ledger, write_notes

SOURCE = Path(__file__).with_name("sumdb_check") / "main.go"
GOPATH = Path("/usr/share/gocode")  # where Debian's golang-golang-x-mod-dev puts the sources


@pytest.fixture(scope="module")
def sumdb_check(tmp_path_factory: pytest.TempPathFactory) -> Path:
    go = shutil.which("go")
    if go is None or not (GOPATH / "src/golang.org/x/mod/sumdb/tlog").is_dir():
        skip_or_fail("needs Debian's golang-go and golang-golang-x-mod-dev (.ci/run installs them)")
    out = tmp_path_factory.mktemp("go")
    binary = out / "sumdb_check"
    subprocess.run([go, "build", "-o", str(binary), str(SOURCE)], check=True, cwd=SOURCE.parent, env={
        **os.environ, "GO111MODULE": "off", "GOPATH": str(GOPATH), "GOCACHE": str(out / "cache"),
        "GOFLAGS": "", "GOPROXY": "off"}, timeout=300)
    return binary


def check(binary: Path, request: dict[str, Any]) -> dict[str, Any]:
    done = subprocess.run([str(binary)], input=json.dumps(request).encode(), capture_output=True,
                          check=True, timeout=60)
    return dict(json.loads(done.stdout))


def b64(hex_text: str) -> str:
    return base64.b64encode(bytes.fromhex(hex_text)).decode()


def checkpointed(url: str, home: Path, notes: int) -> tuple[LedgerApp, str, str, int]:
    """A ledger of ``notes`` notes, its checkpoint note, its checkpoint verifier key, its size."""
    app, _ = make_ledger(url, home)
    write_notes(app, "alice", notes, per_save=3)
    checkpointer = KeyStore(home).load(CHECKPOINTER)
    return app, app.checkpoint(checkpointer), verifier_key(app.require_origin(), checkpointer.public), \
        app.tree_size()


def test_go_sumdb_checks_our_checkpoints_and_every_proof(sqlite_store_url: str, qledger_home: Path,
                                                         sumdb_check: Path) -> None:
    app, note, key, size = checkpointed(sqlite_store_url, qledger_home, 8)
    envelopes = {row.position: row.state or b"" for row in app.source().entries(1, size)}
    roots = {n: app.inclusion_proof(1, n)["root_hash"] for n in range(1, size + 1)}
    records = [{"index": p - 1, "size": n, "root": b64(roots[n]),
                "data": base64.b64encode(envelopes[p]).decode(),
                "proof": [b64(h) for h in proof["inclusion_path"]]}
               for n in range(1, size + 1) for p, proof in
               zip(range(1, n + 1), app.inclusion_proofs(range(1, n + 1), n), strict=True)]
    consistency = [{"old": m, "old_root": b64(roots[m]), "new": n, "new_root": b64(roots[n]),
                    "proof": [b64(h) for h in app.consistency_proof(m, n)["consistency_path"]]}
                   for n in range(2, size + 1) for m in range(1, n)]
    verdict = check(sumdb_check, {"verifier_key": key, "note": note, "records": records,
                                  "consistency": consistency})
    assert verdict["note_error"] == ""
    assert verdict["origin"] == app.require_origin()
    assert (verdict["size"], verdict["root"]) == (size, b64(roots[size]))
    assert verdict["records"] == [""] * len(records) and len(records) == size * (size + 1) // 2
    assert verdict["consistency"] == [""] * len(consistency)
    app.close()


def test_go_sumdb_refuses_what_was_changed(sqlite_store_url: str, qledger_home: Path,
                                           sumdb_check: Path) -> None:
    app, note, key, size = checkpointed(sqlite_store_url, qledger_home, 4)
    proof = app.inclusion_proof(3, size)
    envelope = next(iter(app.source().entries(3, 3))).state or b""
    good = {"index": 2, "size": size, "root": b64(proof["root_hash"]),
            "data": base64.b64encode(envelope).decode(), "proof": [b64(h) for h in proof["inclusion_path"]]}
    flipped = base64.b64encode(bytes([envelope[0] ^ 1]) + envelope[1:]).decode()
    first = bytes.fromhex(proof["inclusion_path"][0])
    wrong_path = [base64.b64encode(first[:-1] + bytes([first[-1] ^ 1])).decode(), *good["proof"][1:]]
    old = app.inclusion_proof(1, 2)["root_hash"]
    step = {"old": 2, "old_root": b64(old), "new": size, "new_root": b64(proof["root_hash"]),
            "proof": [b64(h) for h in app.consistency_proof(2, size)["consistency_path"]]}
    other = verifier_key(app.require_origin(), KeyStore(qledger_home).load("alice").public)
    signature_at = note.index("\u2014 ") + len("\u2014 ") + len(app.require_origin()) + 10
    forged_note = note[:signature_at] + ("A" if note[signature_at] != "A" else "B") + note[signature_at + 1:]
    verdict = check(sumdb_check, {
        "verifier_key": key, "note": note.replace(f"\n{size}\n", f"\n{size + 1}\n", 1),
        "records": [good, {**good, "data": flipped}, {**good, "proof": wrong_path}, {**good, "index": 1}],
        "consistency": [step, {**step, "old_root": b64("00" * 32)}, {**step, "old": 3}]})
    assert verdict["note_error"]  # the body no longer matches its signature
    assert verdict["records"][0] == "" and all(verdict["records"][1:])
    assert verdict["consistency"][0] == "" and all(verdict["consistency"][1:])
    assert check(sumdb_check, {"verifier_key": key, "note": forged_note, "records": [],
                               "consistency": []})["note_error"]
    assert check(sumdb_check, {"verifier_key": other, "note": note, "records": [],
                               "consistency": []})["note_error"]  # signed by another key
    app.close()
