"""The signed content of a ledger entry: what happened, to which stream, by whom."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from qledger.ledger.canonical import canonical_bytes, parse_canonical
from qledger.ledger.errors import NonCanonicalEntryError

SCHEMA_VERSION = 1

# Entries must stay small enough to stream, verify and prove cheaply; anything larger is
# an artifact and goes in by digest (see ``artifact_ref``).
MAX_ENTRY_BYTES = 1024 * 1024

_FIELDS = {
    "origin": str,
    "stream_id": str,
    "stream_version": int,
    "event_type": str,
    "schema_version": int,
    "timestamp": str,
    "principal": str,
    "payload": dict,
}


@dataclass(frozen=True)
class EntryContent:
    origin: str
    stream_id: str
    stream_version: int
    event_type: str
    schema_version: int
    timestamp: str
    principal: str
    payload: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _FIELDS}

    def to_bytes(self) -> bytes:
        return canonical_bytes(self.to_json())

    @classmethod
    def from_bytes(cls, data: bytes) -> EntryContent:
        value = parse_canonical(data)
        if not isinstance(value, dict) or set(value) != set(_FIELDS):
            raise NonCanonicalEntryError(f"entry content must have exactly {sorted(_FIELDS)}")
        for name, kind in _FIELDS.items():
            # The exact type: bool is an int in Python, but a version of `true` is not a version.
            if type(value[name]) is not kind:
                raise NonCanonicalEntryError(f"entry content field {name!r} must be {kind.__name__}")
        return cls(**value)


def artifact_ref(data: bytes, media_type: str) -> dict[str, Any]:
    """How a large artifact appears in a payload: by digest, never inline."""
    return {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "media_type": media_type}
