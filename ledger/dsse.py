"""DSSE envelopes (https://github.com/secure-systems-lab/dsse) holding one Ed25519 signature.

The envelope model and its Pre-Authentication Encoding come from ``securesystemslib.dsse``
so that the bytes we sign are exactly what standard DSSE tooling verifies; only the
Ed25519 operation itself goes straight to ``cryptography`` (one call per entry, hot path).
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

from securesystemslib.dsse import Envelope
from securesystemslib.signer import Signature  # type: ignore[attr-defined]

from qledger.ledger.canonical import canonical_bytes, parse_canonical
from qledger.ledger.errors import NonCanonicalEntryError
from qledger.ledger.keys import PublicKey, SigningKey

EVENT_PAYLOAD_TYPE = "application/vnd.qledger.event+json"

# RFC 8785 escapes only '"', '\\' and U+0000..U+001F in strings and sorts keys, so an
# envelope whose payloadType and keyid hold none of those (every envelope this ledger
# writes) has exactly one canonical spelling: this template.  Writing and checking it here
# skips a general JSON round trip per entry, the largest cost of verify beside the signature
# maths; anything that does not fit the template goes through ``ledger.canonical``, and
# tests/ledger/test_canonical_and_dsse.py checks both ways agree byte for byte.
_PLAIN_STRING = re.compile(r'[^"\\\x00-\x1f]*')
_PLAIN_ENVELOPE = re.compile(
    rb'\{"payload":"([A-Za-z0-9+/]*={0,2})","payloadType":"([^"\\\x00-\x1f]*)",'
    rb'"signatures":\[\{"keyid":"([^"\\\x00-\x1f]*)","sig":"([A-Za-z0-9+/]*={0,2})"\}\]\}')
_PLAIN_TEMPLATE = b'{"payload":"%s","payloadType":"%s","signatures":[{"keyid":"%s","sig":"%s"}]}'


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
    return SignedEnvelope(payload, payload_type, key.key_id, signature,
                          envelope_bytes(payload, payload_type, key.key_id, signature))


def envelope_bytes(payload: bytes, payload_type: str, key_id: str, signature: bytes) -> bytes:
    """The RFC 8785 bytes of the envelope ``securesystemslib.dsse.Envelope.to_dict()`` gives."""
    if _PLAIN_STRING.fullmatch(payload_type) and _PLAIN_STRING.fullmatch(key_id):
        try:
            return _PLAIN_TEMPLATE % (base64.b64encode(payload), payload_type.encode(),
                                      key_id.encode(), base64.b64encode(signature))
        except UnicodeEncodeError:  # a lone surrogate: the general path refuses it with a reason
            pass
    envelope = Envelope(payload, payload_type, {key_id: Signature(key_id, signature.hex())})
    return canonical_bytes(envelope.to_dict())


def _b64(text: object, what: str) -> bytes:
    if not isinstance(text, str):
        raise NonCanonicalEntryError(f"DSSE {what} must be a base64 string")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise NonCanonicalEntryError(f"DSSE {what} is not valid base64") from exc


def _parse_plain(data: bytes) -> SignedEnvelope | None:
    """``parse`` for bytes in the plain template; None if they are not (let ``parse`` decide)."""
    match = _PLAIN_ENVELOPE.fullmatch(data)
    if match is None:
        return None
    payload_b64, payload_type, key_id, sig_b64 = match.groups()
    try:
        # The pattern admits only the base64 alphabet, so binascii needs no validation pass
        # of its own; encoding back rejects every spelling but the standard one.
        payload = binascii.a2b_base64(payload_b64)
        signature = binascii.a2b_base64(sig_b64)
        texts = payload_type.decode(), key_id.decode()  # strict UTF-8, as a JSON reader insists
    except (binascii.Error, ValueError):  # UnicodeDecodeError is a ValueError
        return None
    if (binascii.b2a_base64(payload, newline=False) != payload_b64
            or binascii.b2a_base64(signature, newline=False) != sig_b64):
        return None
    return SignedEnvelope(payload, texts[0], texts[1], signature, data)


def parse(data: bytes) -> SignedEnvelope:
    """Parse canonical envelope bytes; anything else is refused, never repaired."""
    return _parse_plain(data) or parse_general(data)


def parse_general(data: bytes) -> SignedEnvelope:
    """``parse`` through the general canonical JSON reader (the reference for ``_parse_plain``)."""
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
