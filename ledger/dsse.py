"""DSSE envelopes (https://github.com/secure-systems-lab/dsse) holding one Ed25519 signature.

The envelope model and its Pre-Authentication Encoding come from ``securesystemslib.dsse``
so that the bytes we sign are exactly what standard DSSE tooling verifies; only the
Ed25519 operation itself goes straight to ``cryptography`` (one call per entry, hot path).
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from securesystemslib.dsse import Envelope
from securesystemslib.signer import Signature  # type: ignore[attr-defined]

from ledger.canonical import canonical_bytes, parse_canonical
from ledger.errors import NonCanonicalEntryError
from ledger.keys import PublicKey, SigningKey

EVENT_PAYLOAD_TYPE = "application/vnd.qledger.event+json"


def pae(payload_type: str, payload: bytes) -> bytes:
    return bytes(Envelope(payload, payload_type, {}).pae())


@dataclass(frozen=True)
class SignedEnvelope:
    """A parsed envelope with exactly one signature, plus its canonical bytes."""

    payload: bytes
    payload_type: str
    key_id: str
    signature: bytes
    canonical: bytes

    def signature_valid(self, public: PublicKey) -> bool:
        return public.verify(self.signature, pae(self.payload_type, self.payload))

    def to_securesystemslib(self) -> Envelope:
        sig = Signature(self.key_id, self.signature.hex())
        return Envelope(self.payload, self.payload_type, {self.key_id: sig})


def sign(payload: bytes, key: SigningKey, payload_type: str = EVENT_PAYLOAD_TYPE) -> SignedEnvelope:
    signature = key.sign(pae(payload_type, payload))
    envelope = Envelope(payload, payload_type, {key.key_id: Signature(key.key_id, signature.hex())})
    canonical = canonical_bytes(envelope.to_dict())
    return SignedEnvelope(payload, payload_type, key.key_id, signature, canonical)


def _b64(text: object, what: str) -> bytes:
    if not isinstance(text, str):
        raise NonCanonicalEntryError(f"DSSE {what} must be a base64 string")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise NonCanonicalEntryError(f"DSSE {what} is not valid base64") from exc


def parse(data: bytes) -> SignedEnvelope:
    """Parse canonical envelope bytes; anything else is refused, never repaired."""
    value = parse_canonical(data)
    if not isinstance(value, dict) or set(value) != {"payload", "payloadType", "signatures"}:
        raise NonCanonicalEntryError("DSSE envelope must have payload, payloadType, signatures")
    sigs = value["signatures"]
    if not isinstance(sigs, list) or len(sigs) != 1 or not isinstance(sigs[0], dict):
        raise NonCanonicalEntryError("a ledger envelope carries exactly one signature")
    if set(sigs[0]) != {"keyid", "sig"} or not isinstance(sigs[0]["keyid"], str):
        raise NonCanonicalEntryError("DSSE signature must have keyid and sig")
    if not isinstance(value["payloadType"], str):
        raise NonCanonicalEntryError("DSSE payloadType must be a string")
    payload = _b64(value["payload"], "payload")
    signature = _b64(sigs[0]["sig"], "sig")
    # Base64 has more than one spelling of the same bytes; only the standard one is canonical.
    if base64.b64encode(payload).decode() != value["payload"] or (
        base64.b64encode(signature).decode() != sigs[0]["sig"]
    ):
        raise NonCanonicalEntryError("DSSE base64 is not in standard padded form")
    return SignedEnvelope(payload, value["payloadType"], sigs[0]["keyid"], signature, data)
