"""Building a run's lineage bundle from a live store (the offline check is ``provenance.bundle``)."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from qledger.ledger import dsse
from qledger.ledger.app import LedgerApp
from qledger.ledger.checkpoint import parse_note
from qledger.ledger.content import EntryContent
from qledger.ledger.errors import NotFoundError
from qledger.ledger.keys import SigningKey
from qledger.ledger.store.artifacts import StagedArtifacts
from qledger.ledger.topics import wire_topics
from qledger.provenance.bundle import BundleContents, BundleEntry, artifact_digest, sign_bundle
from qledger.provenance.lineage import lineage_json

RESULT_KINDS = ("execution", "post_processing", "report")
BUNDLE_MEDIA_TYPE = "application/vnd.in-toto+json"


@wire_topics("ledger.export_bundle")
class BundleExport(Aggregate):
    """The audit trail of an export: who exported which run's bundle, and the bundle itself by
    digest (its bytes go with this entry into the artifact table, and can be archived)."""

    @event("Exported")
    def __init__(self, *, principal: str, stream_id: str, checkpoint_size: int,
                 bundle: dict[str, Any]) -> None:
        self.stream_id, self.bundle = stream_id, bundle


def export_recorded(app: LedgerApp, stream_id: UUID, export_key: SigningKey,
                    checkpoint_key: SigningKey) -> bytes:
    """``export_bundle``, and an entry signed by the export key recording the export, with the
    bundle's bytes as its artifact."""
    data, size = _export(app, stream_id, export_key, checkpoint_key)
    bundle = StagedArtifacts(app.ledger).put(data, BUNDLE_MEDIA_TYPE)
    app.add_signer(export_key)
    app.save(BundleExport(principal=export_key.principal, stream_id=str(stream_id), checkpoint_size=size,
                          bundle=bundle))
    return data


def export_bundle(app: LedgerApp, stream_id: UUID, export_key: SigningKey,
                  checkpoint_key: SigningKey) -> bytes:
    """The run's signed lineage bundle, proven against a checkpoint covering its last entry."""
    return _export(app, stream_id, export_key, checkpoint_key)[0]


def _export(app: LedgerApp, stream_id: UUID, export_key: SigningKey,
            checkpoint_key: SigningKey) -> tuple[bytes, int]:
    source = app.source()
    stream = source.stream_entries(stream_id, 0)
    if not stream:
        raise NotFoundError(f"no run or stream {stream_id} in this ledger")
    note = app.checkpoint(checkpoint_key)  # a checkpoint that covers the run's last entry
    size = parse_note(note).checkpoint.tree_size
    keys = source.key_rows()
    key_positions = {k.registered_at for k in keys} | {k.revoked_at for k in keys if k.revoked_at}
    positions = sorted({p for p in key_positions if p <= size} | {r.position for r in stream})
    stream_rows = {r.position: r for r in stream}
    paths = app.inclusion_paths(positions, size)
    entries = []
    for position in positions:
        row = stream_rows.get(position) or source.entry_at(position)
        assert row is not None and row.state is not None
        entries.append(BundleEntry(position, row.state, paths[position]))
    contents = [EntryContent.from_bytes(dsse.parse(r.state or b"").payload) for r in stream]
    records = {c.payload["step"]: c.payload["record"] for c in contents
               if "step" in c.payload and "record" in c.payload}
    subjects = [{"name": f"run:{stream_id}/{step}", "digest": {"sha256": artifact_digest(record)}}
                for step, record in records.items() if record.get("kind") in RESULT_KINDS]
    return sign_bundle(BundleContents(
        origin=app.require_origin(), stream_id=str(stream_id), checkpoint_note=note, entries=entries,
        keys=[{"key_id": k.key_id, "principal": k.principal, "public_key": k.public_key.hex(),
               "purpose": k.purpose, "registered_at": k.registered_at, "revoked_at": k.revoked_at}
              for k in keys if k.registered_at <= size],
        summary=_summary(contents, records), subjects=subjects,
        lineage=lineage_json(app.require_origin(), [(r.position, r.state or b"") for r in stream])),
        export_key), size


def _summary(contents: list[EntryContent], records: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The reproducibility summary: what was asked for, where it ran, and what came out."""
    submitted = contents[0].payload
    execution = records.get("execution", {})
    transpilation = records.get("transpilation", {})
    return {
        "workflow_sha256": submitted.get("workflow_sha256"),
        "submitted_by": contents[0].principal,
        "seeds": {"seed_transpiler": transpilation.get("seed_transpiler"),
                  "seed_simulator": execution.get("seed_simulator")},
        "transpiled_qasm3_sha256": transpilation.get("qasm3_sha256"),
        "backend": execution.get("backend"),
        "environment": execution.get("environment"),
        "report": records.get("report"),
        "final_event": contents[-1].event_type.rsplit(".", 1)[-1],
    }
