"""RFC 8785 (JSON Canonicalization Scheme): the one serializer applied before anything is signed.

Everything that is hashed or signed passes through here, so there is exactly one seam
where bytes are produced from values and checked to be canonical.
"""

from __future__ import annotations

import json
from typing import Any

import rfc8785

from ledger.errors import NonCanonicalEntryError

JSONValue = Any


def canonical_bytes(value: JSONValue) -> bytes:
    """Serialise ``value`` as RFC 8785 canonical JSON."""
    try:
        return bytes(rfc8785.dumps(value))
    except (rfc8785.CanonicalizationError, TypeError, ValueError) as exc:
        raise NonCanonicalEntryError(f"value cannot be canonicalised: {exc}") from exc


def parse_canonical(data: bytes) -> JSONValue:
    """Parse ``data`` and insist it is exactly the canonical form of what it encodes.

    Accepting only canonical bytes means one value has one byte string, so a hash or a
    signature can never be made to mean two things.
    """
    try:
        value = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise NonCanonicalEntryError(f"not JSON: {exc}") from exc
    if canonical_bytes(value) != data:
        raise NonCanonicalEntryError("JSON is not in RFC 8785 canonical form")
    return value
