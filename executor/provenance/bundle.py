"""Signed lineage bundles: everything an auditor needs to check one run offline.

A bundle is an in-toto Statement v1 (subjects: the run's result artifacts with sha256
digests) in a DSSE envelope signed by the ledger's export key, so standard in-toto/DSSE
tooling can check its outer signature.  Its predicate carries the ledger entries (DSSE
envelopes as stored) with an RFC 9162 inclusion proof each against one signed checkpoint,
the checkpoint note, and the public keys with their registration entries.  Verification
needs only this module: no database, no qledger server.
"""

from __future__ import annotations

import binascii
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from qledger.ledger import dsse, merkle
from qledger.ledger.canonical import canonical_bytes, parse_canonical
from qledger.ledger.checkpoint import parse_note
from qledger.ledger.content import EntryContent
from qledger.ledger.errors import BundleFormatError, QledgerError
from qledger.ledger.keys import PublicKey, SigningKey
from qledger.ledger.registry import KEY_EVENT_TYPES, KeyRegistry
from qledger.provenance.lineage import lineage_json

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://qledger.dev/lineage-bundle/v1"
IN_TOTO_PAYLOAD_TYPE = "application/vnd.in-toto+json"


class BundleInvalidError(QledgerError):
    """The bundle was read but does not verify; the message says the first reason."""


@dataclass(frozen=True)
class BundleEntry:
    position: int
    envelope: bytes  # canonical DSSE bytes, exactly as stored
    inclusion_path: list[bytes]


@dataclass
class BundleContents:
    origin: str
    stream_id: str
    checkpoint_note: str
    entries: list[BundleEntry]
    keys: list[dict[str, Any]]
    summary: dict[str, Any]
    subjects: list[dict[str, Any]] = field(default_factory=list)
    lineage: dict[str, Any] | None = None  # PROV-JSON of the run, derived from its entries


def artifact_digest(value: Any) -> str:
    return hashlib.sha256(canonical_bytes(value)).hexdigest()


def sign_bundle(contents: BundleContents, key: SigningKey) -> bytes:
    statement = {
        "_type": STATEMENT_TYPE,
        "subject": contents.subjects,
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "origin": contents.origin,
            "stream_id": contents.stream_id,
            "checkpoint": contents.checkpoint_note,
            "entries": [{"position": e.position, "envelope": json.loads(e.envelope),
                         "inclusion_path": [h.hex() for h in e.inclusion_path]} for e in contents.entries],
            "keys": contents.keys,
            "summary": contents.summary,
            "lineage": contents.lineage,
        },
    }
    return dsse.sign(canonical_bytes(statement), key, IN_TOTO_PAYLOAD_TYPE).canonical


@dataclass
class BundleReport:
    stream_id: str
    entries: int
    tree_size: int
    subjects: list[dict[str, Any]]
    origin: str = ""
    signer_key_id: str = ""  # the export key that signed the bundle
    signer: str = ""  # its principal, as the bundle's own entries register it
    pinned: bool = False  # checked against a key the verifier trusts, not only the bundle's own
    checkpoint_note: str = ""  # the signed checkpoint every entry was proven against


def _fail(message: str) -> BundleInvalidError:
    return BundleInvalidError(message)


def read_bundle(data: bytes) -> tuple[dsse.SignedEnvelope, dict[str, Any]]:
    """Parse the outer envelope and statement; BundleFormatError if it cannot be read at all."""
    try:
        envelope = dsse.parse(data)
        statement = parse_canonical(envelope.payload)
    except QledgerError as exc:
        raise BundleFormatError(f"not a qledger bundle: {exc}") from exc
    if not isinstance(statement, dict) or statement.get("predicateType") != PREDICATE_TYPE:
        raise BundleFormatError("not a qledger lineage bundle (predicateType)")
    return envelope, statement


def verify_bundle(data: bytes, trusted_export_key: PublicKey | None = None) -> BundleReport:
    """Check a bundle offline, its PROV graph included: rebuilt from the run's entries, it must
    be the graph the bundle carries."""
    envelope, statement = read_bundle(data)
    if envelope.payload_type != IN_TOTO_PAYLOAD_TYPE or statement.get("_type") != STATEMENT_TYPE:
        raise _fail("outer envelope is not an in-toto Statement v1")
    try:
        return _verify(envelope, statement, trusted_export_key)
    except (KeyError, TypeError, ValueError, binascii.Error) as exc:
        raise _fail(f"malformed bundle field: {exc!r}") from exc


def _verify(envelope: dsse.SignedEnvelope, statement: dict[str, Any],
            trusted: PublicKey | None) -> BundleReport:
    predicate = statement["predicate"]
    origin, stream_id = predicate["origin"], predicate["stream_id"]
    keys = {k["key_id"]: k for k in predicate["keys"]}

    # 1. The outer signature, by the export key (pinned, or as the bundle's entries register it).
    listed = keys.get(envelope.key_id)
    export = PublicKey(bytes.fromhex(listed["public_key"])) if listed else None
    if trusted is not None:
        if envelope.key_id != trusted.key_id:
            raise _fail("bundle is not signed by the trusted export key")
        export = trusted
    if export is None or not envelope.signature_valid(export):
        raise _fail("outer signature does not verify with the export key")

    # 2. The checkpoint and every entry's inclusion in it.
    note = parse_note(predicate["checkpoint"])
    if note.checkpoint.origin != origin:
        raise _fail("checkpoint is for another origin")
    size, root = note.checkpoint.tree_size, note.checkpoint.root_hash
    entries = []
    raw_envelopes: dict[int, bytes] = {}
    for raw in predicate["entries"]:
        position = int(raw["position"])
        env_bytes = canonical_bytes(raw["envelope"])
        path = [bytes.fromhex(h) for h in raw["inclusion_path"]]
        if not merkle.verify_inclusion(position - 1, size, merkle.leaf_hash(env_bytes), path, root):
            raise _fail(f"entry at position {position}: inclusion proof does not verify against "
                        f"the checkpoint of size {size}")
        parsed = dsse.parse(env_bytes)
        entries.append((position, parsed, EntryContent.from_bytes(parsed.payload)))
        raw_envelopes[position] = env_bytes
    positions = [p for p, _, _ in entries]
    if positions != sorted(set(positions)):
        raise _fail("entries are not in strictly increasing position order")

    # 3. Keys: the registry is rebuilt from the key entries the bundle carries (proven above).
    registry = KeyRegistry()
    for position, parsed, content in entries:
        if content.origin != origin:
            raise _fail(f"entry at position {position} belongs to ledger {content.origin!r}")
        try:
            registry.check_signer(parsed.key_id, content, position)
        except QledgerError as exc:
            raise _fail(f"entry at position {position}: {exc}") from exc
        record = registry.keys.get(parsed.key_id)
        public = record.public if record else PublicKey(bytes.fromhex(str(content.payload["public_key"])))
        if not parsed.signature_valid(public):
            raise _fail(f"entry at position {position}: signature does not verify")
        if content.event_type in KEY_EVENT_TYPES:
            registry.apply(position, content)
    if entries and entries[0][0] != 1:
        raise _fail("the genesis entry (position 1) is missing")
    for key_id, listed in keys.items():
        record = registry.keys.get(key_id)
        if record is None or record.public.raw.hex() != listed["public_key"] or (
                record.purpose != listed["purpose"] or record.registered_at != listed["registered_at"]):
            raise _fail(f"key {key_id[:16]}… is not as the bundle's key entries register it")
    checkpointers = [r for r in registry.keys.values()
                     if r.purpose == "checkpoint" and r.valid_for_checkpoint(size)]
    if not any(note.signed_by(origin, r.public) for r in checkpointers):
        raise _fail("checkpoint is not signed by a checkpoint key the bundle proves")
    exporter = registry.keys.get(envelope.key_id)
    if trusted is None and (exporter is None or exporter.purpose != "export"):
        raise _fail("the outer signature's key is not an export key registered in the ledger")

    # 4. The run: its whole stream, nothing missing, nothing from elsewhere.
    stream = [(p, c) for p, _, c in entries if c.event_type not in KEY_EVENT_TYPES]
    if any(c.stream_id != stream_id for _, c in stream):
        bad = next(p for p, c in stream if c.stream_id != stream_id)
        raise _fail(f"entry at position {bad} is from another stream than run {stream_id}")
    versions = [c.stream_version for _, c in stream]
    if versions != list(range(1, len(versions) + 1)):
        raise _fail(f"run {stream_id}: stream versions {versions} are not 1..n (an entry is missing)")

    # 5. The PROV graph says what the run's entries say.
    if predicate.get("lineage") is None:
        raise _fail("the bundle carries no PROV lineage graph")
    expected = lineage_json(origin, [(p, raw_envelopes[p]) for p, _ in stream])
    if canonical_bytes(expected) != canonical_bytes(predicate["lineage"]):
        raise _fail("the PROV lineage graph does not match the run's entries")

    # 6. Subjects: each digest is recomputed from the entries.
    artifacts = {f"run:{stream_id}/{c.payload['step']}": artifact_digest(c.payload["record"])
                 for _, c in stream if "step" in c.payload and "record" in c.payload}
    for subject in statement["subject"]:
        if artifacts.get(subject["name"]) != subject["digest"]["sha256"]:
            raise _fail(f"subject {subject['name']} does not match the recorded artifact")
    return BundleReport(stream_id, len(entries), size, statement["subject"], origin, envelope.key_id,
                        str(listed.get("principal", "")) if listed else "", trusted is not None,
                        predicate["checkpoint"])

