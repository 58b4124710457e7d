"""Signed lineage bundles: valid ones verify offline; each kind of tampering fails with its reason."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from securesystemslib.signer import SSlibKey
from typer.testing import CliRunner

from qledger.cli import app as cli
from qledger.ledger import dsse, merkle
from qledger.ledger.admin import CHECKPOINTER, export_key
from qledger.ledger.canonical import canonical_bytes
from qledger.ledger.checkpoint import Checkpoint, parse_note
from qledger.ledger.errors import BundleFormatError
from qledger.ledger.keys import KeyStore, SigningKey
from qledger.provenance.bundle import IN_TOTO_PAYLOAD_TYPE, BundleInvalidError, verify_bundle
from qledger.provenance.bundle_export import export_bundle
from qledger.runs.reference_workflows import BELL
from tests.executor.conftest import Service, ServiceFactory


@pytest.fixture
def two_runs(service_factory: ServiceFactory) -> tuple[Service, list[UUID], SigningKey]:
    service = service_factory()
    runs = []
    for _ in range(2):
        run_id = service.submit(BELL).run.run_id
        service.watch(run_id)
        runs.append(UUID(run_id))
    keys = KeyStore(service.home)
    exporter = export_key(service.app, keys)
    return service, runs, exporter


def bundle_of(service: Service, run: UUID, exporter: SigningKey) -> bytes:
    return export_bundle(service.app, run, exporter, KeyStore(service.home).load(CHECKPOINTER))


def resigned(data: bytes, key: SigningKey, change: Callable[[dict[str, Any]], None]) -> bytes:
    """Change the statement and sign it again with the real export key: inner checks must catch it."""
    statement = json.loads(dsse.parse(data).payload)
    change(statement)
    return dsse.sign(canonical_bytes(statement), key, IN_TOTO_PAYLOAD_TYPE).canonical


def reason(data: bytes, trusted: Any = None) -> str:
    with pytest.raises(BundleInvalidError) as caught:
        verify_bundle(data, trusted)
    return str(caught.value)


def test_valid_bundle_verifies_offline_with_standard_tooling(two_runs: tuple[Service, list[UUID],
                                                                             SigningKey]) -> None:
    service, runs, exporter = two_runs
    data = bundle_of(service, runs[0], exporter)
    report = verify_bundle(data, exporter.public)
    assert report.stream_id == str(runs[0]) and {s["name"].rsplit("/", 1)[1] for s in report.subjects} == {
        "execution", "post_processing", "report"}
    # The outer envelope is plain DSSE over an in-toto Statement: securesystemslib checks it.
    key = SSlibKey(exporter.key_id, "ed25519", "ed25519", {"public": exporter.public.raw.hex()})
    assert exporter.key_id in dsse.parse(data).to_securesystemslib().verify([key], 1)
    statement = json.loads(dsse.parse(data).payload)
    assert statement["_type"] == "https://in-toto.io/Statement/v1"
    assert "not signed by the trusted export key" in reason(data, SigningKey.generate("x").public)


def test_any_changed_byte_fails(two_runs: tuple[Service, list[UUID], SigningKey]) -> None:
    service, runs, exporter = two_runs
    data = bundle_of(service, runs[0], exporter)
    for offset in range(0, len(data), 89):
        tampered = bytearray(data)
        tampered[offset] = ord("A") if tampered[offset] != ord("A") else ord("B")
        with pytest.raises((BundleInvalidError, BundleFormatError)):
            verify_bundle(bytes(tampered))


def test_removed_entry_fails(two_runs: tuple[Service, list[UUID], SigningKey]) -> None:
    service, runs, exporter = two_runs
    data = bundle_of(service, runs[0], exporter)

    def drop_a_step(statement: dict[str, Any]) -> None:
        statement["predicate"]["entries"].pop(-3)

    assert "an entry is missing" in reason(resigned(data, exporter, drop_a_step))


def test_entry_from_another_run_spliced_in_fails(two_runs: tuple[Service, list[UUID], SigningKey]) -> None:
    service, runs, exporter = two_runs
    mine, other = (json.loads(dsse.parse(bundle_of(service, r, exporter)).payload) for r in runs)
    foreign = other["predicate"]["entries"][-2]  # carries a valid proof against the same checkpoint

    def splice(statement: dict[str, Any]) -> None:
        statement["predicate"]["entries"][-2] = foreign
        statement["predicate"]["entries"].sort(key=lambda e: e["position"])
        statement["predicate"]["checkpoint"] = other["predicate"]["checkpoint"]

    data = bundle_of(service, runs[0], exporter)
    assert "from another stream" in reason(resigned(data, exporter, splice))
    assert mine["predicate"]["stream_id"] != other["predicate"]["stream_id"]


def test_proof_for_the_wrong_tree_size_fails(two_runs: tuple[Service, list[UUID], SigningKey]) -> None:
    service, runs, exporter = two_runs
    data = bundle_of(service, runs[0], exporter)
    size = parse_note(json.loads(dsse.parse(data).payload)["predicate"]["checkpoint"]).checkpoint.tree_size
    wrong = service.app.inclusion_proof(2, size - 1)["inclusion_path"]

    def swap(statement: dict[str, Any]) -> None:
        entry = next(e for e in statement["predicate"]["entries"] if e["position"] == 2)
        entry["inclusion_path"] = wrong

    assert "inclusion proof does not verify" in reason(resigned(data, exporter, swap))


def test_checkpoint_resigned_by_unknown_key_fails(two_runs: tuple[Service, list[UUID], SigningKey]) -> None:
    service, runs, exporter = two_runs
    data = bundle_of(service, runs[0], exporter)

    def resign_checkpoint(statement: dict[str, Any]) -> None:
        note = parse_note(statement["predicate"]["checkpoint"])
        statement["predicate"]["checkpoint"] = note.checkpoint.sign(SigningKey.generate("checkpointer"))

    assert "not signed by a checkpoint key" in reason(resigned(data, exporter, resign_checkpoint))


def test_later_checkpoint_is_consistent_with_the_bundles(two_runs: tuple[Service, list[UUID],
                                                                        SigningKey]) -> None:
    service, runs, exporter = two_runs
    data = bundle_of(service, runs[0], exporter)
    old = parse_note(json.loads(dsse.parse(data).payload)["predicate"]["checkpoint"]).checkpoint
    service.watch(service.submit(BELL).run.run_id)
    new = parse_note(service.app.checkpoint(KeyStore(service.home).load(CHECKPOINTER))).checkpoint
    proof = service.app.consistency_proof(old.tree_size, new.tree_size)
    assert merkle.verify_consistency(old.tree_size, new.tree_size, old.root_hash, new.root_hash,
                                     [bytes.fromhex(h) for h in proof["consistency_path"]])
    forged = Checkpoint(old.origin, old.tree_size, bytes(32))
    assert not merkle.verify_consistency(forged.tree_size, new.tree_size, forged.root_hash, new.root_hash,
                                         [bytes.fromhex(h) for h in proof["consistency_path"]])


def test_cli_export_and_verify_bundle(two_runs: tuple[Service, list[UUID], SigningKey], tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    service, runs, exporter = two_runs
    monkeypatch.setenv("QLEDGER_HOME", str(service.home))
    store = service.app.store.url
    out = tmp_path / "b.json"
    runner = CliRunner()
    result = runner.invoke(cli, ["export-bundle", str(runs[1]), "-o", str(out), "--store", store])
    assert result.exit_code == 0, result.output
    pin = tmp_path / "exporter.pub"
    pin.write_text(runner.invoke(cli, ["keys", "public", "exporter"]).output)
    assert pin.read_text().strip() == exporter.public.raw.hex()
    result = runner.invoke(cli, ["verify-bundle", str(out), "--trusted-key", str(pin)])
    assert result.exit_code == 0 and result.output.startswith("VALID"), result.output
    # Without a pinned key the bundle only checks out against itself, and the command says so.
    unpinned = runner.invoke(cli, ["verify-bundle", str(out)])
    assert unpinned.exit_code == 4 and unpinned.output.startswith("UNPINNED: self-consistent only")
    assert exporter.key_id in unpinned.output and repr(service.origin) in unpinned.output
    assert unpinned.output.count("\n") == 1
    envelope = json.loads(out.read_bytes())
    payload = json.loads(base64.b64decode(envelope["payload"]))
    payload["predicate"]["summary"]["submitted_by"] = "mallory"
    envelope["payload"] = base64.b64encode(canonical_bytes(payload)).decode()
    out.write_bytes(canonical_bytes(envelope))
    result = runner.invoke(cli, ["verify-bundle", str(out)])
    assert result.exit_code == 1 and "INVALID: outer signature" in result.output
    out.write_text("{")
    assert runner.invoke(cli, ["verify-bundle", str(out)]).exit_code == 2
    assert runner.invoke(cli, ["export-bundle", "nope", "-o", str(out), "--store", store]).exit_code == 2


def test_prov_lineage_reads_back_and_is_checked(two_runs: tuple[Service, list[UUID], SigningKey]) -> None:
    from prov.model import ProvDocument

    service, runs, exporter = two_runs
    data = bundle_of(service, runs[0], exporter)
    lineage = json.loads(dsse.parse(data).payload)["predicate"]["lineage"]
    document = ProvDocument.deserialize(content=json.dumps(lineage), format="json")
    assert json.loads(str(document.serialize(format="json"))) == lineage  # the prov package reads it back
    activities = lineage["activity"]
    assert {a.rsplit("/", 1)[1] for a in activities} == {
        "data_preparation", "circuit_synthesis", "transpilation", "execution", "post_processing", "report"}
    assert "qledger:backend/aer_ideal" in lineage["agent"] and "qledger:principal/alice" in lineage["agent"]
    assert all("qledger:ledger_position" in attrs for attrs in activities.values())
    assert len(lineage["wasGeneratedBy"]) == 6 and len(lineage["used"]) >= 6
    verify_bundle(data, exporter.public)

    def alter(statement: dict[str, Any]) -> None:
        node = next(iter(statement["predicate"]["lineage"]["activity"].values()))
        node["qledger:ledger_position"] = 999

    with pytest.raises(BundleInvalidError, match="PROV lineage graph does not match"):
        verify_bundle(resigned(data, exporter, alter), exporter.public)
    # The check cannot be skipped: a bundle without its graph is invalid, not unchecked.
    with pytest.raises(BundleInvalidError, match="carries no PROV lineage"):
        verify_bundle(resigned(data, exporter, lambda s: s["predicate"].pop("lineage")), exporter.public)


def test_cli_lineage(two_runs: tuple[Service, list[UUID], SigningKey],
                     monkeypatch: pytest.MonkeyPatch) -> None:
    service, runs, _ = two_runs
    monkeypatch.setenv("QLEDGER_HOME", str(service.home))
    runner = CliRunner()
    store = service.app.store.url
    prov_json = runner.invoke(cli, ["lineage", str(runs[0]), "--store", store])
    assert prov_json.exit_code == 0 and "wasGeneratedBy" in json.loads(prov_json.output)
    dot = runner.invoke(cli, ["lineage", str(runs[0]), "--store", store, "--format", "dot"])
    assert dot.exit_code == 0 and dot.output.startswith("digraph lineage {")
    assert '[label="used"]' in dot.output
    assert runner.invoke(cli, ["lineage", str(UUID(int=0)), "--store", store]).exit_code == 2


def test_ledger_rpcs_export_bundle_lineage_and_report(service_factory: ServiceFactory) -> None:
    import grpc

    from qledger.api import qledger_pb2 as pb
    from tests.executor.rpc.test_grpc import code_of

    service = service_factory(export=True)
    runs = []
    for _ in range(2):
        run_id = service.submit(BELL).run.run_id
        service.watch(run_id)
        runs.append(run_id)
    bundle = service.ledger.ExportBundle(pb.RunRef(run_id=runs[0]), timeout=30)
    exporter = KeyStore(service.home).load("exporter")
    assert verify_bundle(bundle.envelope, exporter.public).stream_id == runs[0]
    lineage = json.loads(service.ledger.GetLineage(pb.RunRef(run_id=runs[0])).prov_json)
    assert lineage == json.loads(dsse.parse(bundle.envelope).payload)["predicate"]["lineage"]
    report = json.loads(service.ledger.GetReport(pb.GetReportRequest(run_id=runs[0], against_run_id=runs[1]))
                        .json)
    assert report["comparison"]["verdict"] == "reproduced exactly"
    assert code_of(lambda: service.ledger.GetLineage(pb.RunRef(run_id="x")))[0] == \
        grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(lambda: service.ledger.GetReport(pb.GetReportRequest(
        run_id=runs[0], against_run_id=str(UUID(int=5))))) == (grpc.StatusCode.NOT_FOUND, ["against_run_id"])
