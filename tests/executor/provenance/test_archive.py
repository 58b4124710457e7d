"""Tiered retention: circuits and counts by digest, hot in the store or moved to an archive
directory; verify tells missing blobs apart from tampered ones."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from qledger.cli import app as cli
from qledger.ledger import dsse
from qledger.ledger.artifacts import ArchiveDirectory, ArchiveError, artifact_refs
from qledger.ledger.content import artifact_ref
from qledger.ledger.errors import QledgerError
from qledger.ledger.store.artifacts import HotArtifacts, StagedArtifacts
from qledger.runs.reference_workflows import BELL, GHZ_NOISY
from tests.executor.conftest import Service, step_records
from tests.executor.runs.test_reliability import payloads
from tests.ledger.helpers import Note, RawStore, make_ledger

JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                    lambda children: st.lists(children, max_size=3)
                    | st.dictionaries(st.text(max_size=5), children, max_size=3), max_leaves=10)


@given(JSON, st.lists(st.binary(max_size=64), max_size=4))
def test_every_reference_in_a_payload_is_found(noise: Any, blobs: list[bytes]) -> None:
    refs = [artifact_ref(b, "application/octet-stream") for b in blobs]
    payload = {"noise": noise, "nested": [{"deeper": ref} for ref in refs]}
    assert [r["sha256"] for r in artifact_refs(payload)] == [r["sha256"] for r in refs]


def test_archive_directory_is_content_addressed(tmp_path: Path) -> None:
    archive = ArchiveDirectory(tmp_path)
    ref = archive.put(b"OPENQASM 3.0;", "text/x-openqasm3")
    assert archive.path(ref["sha256"]) == tmp_path / "sha256" / ref["sha256"][:2] / ref["sha256"]
    assert archive.get(ref["sha256"]) == b"OPENQASM 3.0;" and archive.get("0" * 64) is None
    assert archive.put(b"OPENQASM 3.0;", "text/x-openqasm3") == ref  # idempotent
    assert not list(tmp_path.rglob(".incoming-*")), "no temporary file is left behind"
    with pytest.raises(ArchiveError, match="not a sha256 digest"):
        archive.get("../../etc/passwd")


def verify(store: str, *extra: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["verify", "--store", store, *extra])
    return result.exit_code, result.output


def test_runs_keep_circuits_and_counts_and_archive_moves_them(service: Service, tmp_path: Path) -> None:
    runs = [service.submit(body).run.run_id for body in (BELL, GHZ_NOISY)]
    records = [step_records(payloads(service, run)) for run in runs]
    hot = HotArtifacts(service.app.ledger)
    for record in records:
        transpiled = record["transpilation"]["artifacts"]["transpiled_qasm3"]
        assert transpiled["sha256"] == record["transpilation"]["qasm3_sha256"]
        text = hot.get(transpiled["sha256"])
        assert text is not None and text.decode().startswith("OPENQASM 3.0;")
        counts = record["execution"]["artifacts"]["counts"]
        stored = hot.get(counts["sha256"])
        assert stored is not None and json.loads(stored) == record["execution"]["counts"]
    store = service.app.store.url
    code, out = verify(store)
    assert code == 0 and "0 missing" in out and "0 archived" in out
    root_before = service.app.inclusion_proof(1)["root_hash"]

    archive_dir = tmp_path / "archive"
    moved = CliRunner().invoke(cli, ["archive", "--to", str(archive_dir), "--store", store])
    assert moved.exit_code == 0 and "archived " in moved.output
    assert hot.listing() == []
    # The ledger is untouched: same root, every entry still verifies.
    assert service.app.inclusion_proof(1)["root_hash"] == root_before
    code, out = verify(store)
    assert code == 3 and "MISSING: position" in out and "TAMPERED" not in out
    code, out = verify(store, "--archive", str(archive_dir))
    assert code == 0 and "0 missing" in out and "0 hot" in out
    again = CliRunner().invoke(cli, ["archive", "--to", str(archive_dir), "--store", store])
    assert again.exit_code == 0 and "archived 0 artifacts" in again.output

    # An archived copy that no longer hashes to its digest is tampering, at the entry naming it.
    victim = records[1]["execution"]["artifacts"]["counts"]["sha256"]
    path = ArchiveDirectory(archive_dir).path(victim)
    path.write_bytes(path.read_bytes().replace(b"0", b"1", 1))
    code, out = verify(store, "--archive", str(archive_dir))
    assert code == 1 and "artifact altered" in out and victim[:16] in out


def test_a_hot_copy_altered_in_the_database_is_tampering(service: Service) -> None:
    run = service.submit(BELL).run.run_id
    record = step_records(payloads(service, run))
    victim = record["execution"]["artifacts"]["counts"]["sha256"]
    raw = RawStore(service.app.store.url)
    raw.execute(f"UPDATE {raw.prefix}ledger_artifacts SET data = %s WHERE sha256 = %s",
                (b'{"00":1}', victim))
    code, out = verify(service.app.store.url)
    assert code == 1 and "artifact altered" in out and "hot copy" in out
    assert hashlib.sha256(b'{"00":1}').hexdigest() != victim


def test_artifacts_commit_with_the_entries_that_reference_them(store_url: str, qledger_home: Path) -> None:
    app, _ = make_ledger(store_url, qledger_home)
    staged, hot = StagedArtifacts(app.ledger), HotArtifacts(app.ledger)
    ref = staged.put(b"kept with its entry", "text/plain")
    assert hot.get(ref["sha256"]) is None, "nothing is written before the entry is saved"
    app.save(Note(principal="alice", title="cites " + ref["sha256"]))
    assert hot.get(ref["sha256"]) == b"kept with its entry"

    lost = staged.put(b"its entry was refused", "text/plain")
    with pytest.raises(QledgerError):
        app.save(Note(principal="nobody-registered", title="refused"))
    app.save(Note(principal="alice", title="a later, unrelated entry"))
    assert hot.get(lost["sha256"]) is None, "a refused entry's artifacts are not written, then or later"


def test_an_exported_bundle_is_recorded_and_archivable(service: Service, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QLEDGER_HOME", str(service.home))
    run = service.submit(BELL).run.run_id
    service.watch(run)
    store, out = service.app.store.url, tmp_path / "b.json"
    before = service.app.tree_size()
    result = CliRunner().invoke(cli, ["export-bundle", run, "-o", str(out), "--store", store])
    assert result.exit_code == 0, result.output
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    # One entry more, signed by the export key, naming the run and the bundle by digest.
    assert service.app.tree_size() == before + 2  # the export key's registration, then the export
    last = service.app.source().entry_at(service.app.tree_size())  # type: ignore[attr-defined]
    content = json.loads(dsse.parse(last.state).payload)
    assert content["principal"] == "exporter" and content["payload"]["stream_id"] == run
    assert content["payload"]["bundle"]["sha256"] == digest
    assert HotArtifacts(service.app.ledger).get(digest) == out.read_bytes()
    moved = CliRunner().invoke(cli, ["archive", "--to", str(tmp_path / "a"), "--store", store])
    assert moved.exit_code == 0
    assert ArchiveDirectory(tmp_path / "a").get(digest) == out.read_bytes()
    # RUN_OR_ARTIFACT: the report's node names the same run, so the same run is bundled.
    by_artifact = tmp_path / "by-artifact.json"
    result = CliRunner().invoke(cli, ["export-bundle", f"qledger:report/{run}/report", "-o", str(by_artifact),
                                      "--store", store])
    assert result.exit_code == 0, result.output
    assert json.loads(dsse.parse(by_artifact.read_bytes()).payload)["predicate"]["stream_id"] == run
    code, output = verify(store, "--archive", str(tmp_path / "a"))
    assert code == 0, output
