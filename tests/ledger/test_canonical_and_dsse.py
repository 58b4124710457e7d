"""Canonicalisation and DSSE signing: property tests and tamper tests."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from securesystemslib.signer import SSlibKey

from qledger.ledger import dsse
from qledger.ledger.canonical import canonical_bytes, canonical_bytes_slow, parse_canonical
from qledger.ledger.content import EntryContent
from qledger.ledger.errors import NonCanonicalEntryError
from qledger.ledger.keys import SigningKey

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children,
                                                                        max_size=4),
    max_leaves=20,
)

KEY = SigningKey.from_seed("alice", bytes(range(32)))


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_canonical_bytes_round_trip(value: object) -> None:
    data = canonical_bytes(value)
    assert parse_canonical(data) == value


any_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**60), 2**60) | st.text()
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children,
                                                                        max_size=4),
    max_leaves=20,
)


@settings(max_examples=500, deadline=None)
@given(any_json)
def test_fast_path_agrees_with_rfc8785_package(value: object) -> None:
    try:
        reference = canonical_bytes_slow(value)
        parse_canonical(reference)  # e.g. 2.0**53 writes an integer RFC 8785 will not read
    except NonCanonicalEntryError:
        with pytest.raises(NonCanonicalEntryError):
            canonical_bytes(value)
        return
    assert canonical_bytes(value) == reference
    assert canonical_bytes(parse_canonical(reference)) == reference
    loose = json.dumps(value, indent=1, ensure_ascii=True).encode()
    if loose != reference:
        with pytest.raises(NonCanonicalEntryError):
            parse_canonical(loose)


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.text(min_size=1, max_size=5), st.integers(), min_size=2, max_size=5))
def test_non_canonical_spellings_are_refused(value: dict[str, int]) -> None:
    spaced = json.dumps(value, indent=1).encode()
    with pytest.raises(NonCanonicalEntryError):
        parse_canonical(spaced)


def content(payload: dict[str, object]) -> EntryContent:
    return EntryContent("origin", "00000000-0000-0000-0000-000000000001", 1, "t:T", 1,
                        "2026-01-01T00:00:00+00:00", "alice", payload)


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.text(max_size=8), json_values, max_size=4))
def test_envelope_verifies_with_securesystemslib(payload: dict[str, object]) -> None:
    envelope = dsse.sign(content(payload).to_bytes(), KEY)
    parsed = dsse.parse(envelope.canonical)
    assert parsed == envelope
    assert EntryContent.from_bytes(parsed.payload).payload == payload
    key = SSlibKey(KEY.key_id, "ed25519", "ed25519", {"public": KEY.public.raw.hex()})
    verified = parsed.to_securesystemslib().verify([key], 1)
    assert KEY.key_id in verified


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0))
def test_any_changed_byte_is_refused_or_fails_to_verify(where: int) -> None:
    envelope = dsse.sign(content({"shots": 1024}).to_bytes(), KEY)
    data = bytearray(envelope.canonical)
    index = where % len(data)
    data[index] = (data[index] + 1) % 256
    try:
        parsed = dsse.parse(bytes(data))
    except NonCanonicalEntryError:
        return
    assert not parsed.signature_valid(KEY.public) or parsed.key_id != KEY.key_id


def test_envelope_shape_is_enforced() -> None:
    envelope = dsse.sign(b"{}", KEY)
    value = json.loads(envelope.canonical)
    value["signatures"].append(value["signatures"][0])
    with pytest.raises(NonCanonicalEntryError, match="exactly one signature"):
        dsse.parse(canonical_bytes(value))
    with pytest.raises(NonCanonicalEntryError):
        EntryContent.from_bytes(canonical_bytes({"origin": "x"}))


@settings(max_examples=3000, deadline=None)
@given(st.one_of(st.floats(min_value=1e-7, max_value=1e15), st.floats(min_value=-1e15, max_value=-1e-7),
                 st.integers(-(10**6), 10**6).map(lambda i: i / 1000)))
def test_plain_notation_floats_take_the_fast_path_correctly(x: float) -> None:
    # Timings, probabilities and distances are floats in every step record: the fast path
    # must spell them exactly as RFC 8785 (ECMAScript) does.
    value = {"ms": x, "nested": [x, -x]}
    assert canonical_bytes(value) == canonical_bytes_slow(value)
    assert parse_canonical(canonical_bytes_slow(value)) == value


# --- the plain-envelope template against the general canonical path -------------------

envelope_strings = st.one_of(st.just(dsse.EVENT_PAYLOAD_TYPE), st.text(max_size=12),
                             st.text(alphabet='"\\\x00\x1f\x7f\u2028é\U0001f600ab/+=', max_size=6))


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=64), envelope_strings, envelope_strings, st.binary(max_size=64))
def test_envelope_template_writes_what_rfc8785_writes(payload: bytes, payload_type: str, key_id: str,
                                                      signature: bytes) -> None:
    from securesystemslib.dsse import Envelope
    from securesystemslib.signer import Signature

    general = Envelope(payload, payload_type, {key_id: Signature(key_id, signature.hex())})
    try:
        reference = canonical_bytes_slow(general.to_dict())
    except NonCanonicalEntryError:
        with pytest.raises(NonCanonicalEntryError):
            dsse.envelope_bytes(payload, payload_type, key_id, signature)
        return
    data = dsse.envelope_bytes(payload, payload_type, key_id, signature)
    assert data == reference
    assert dsse.parse(data) == dsse.parse_general(data)
    assert dsse.parse(data).payload == payload and dsse.parse(data).signature == signature


def _mutations(data: bytes, where: int, what: int) -> list[bytes]:
    index = where % (len(data) + 1)
    changed = bytearray(data)
    if index < len(data):
        changed[index] = what
    return [bytes(changed), data[:index] + bytes([what]) + data[index:], data[:index] + data[index + 1:]]


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=24), envelope_strings, st.integers(min_value=0), st.integers(0, 255))
def test_envelope_fast_parse_accepts_only_what_the_general_parse_accepts(
        payload: bytes, key_id: str, where: int, what: int) -> None:
    # Tamper with one byte of a real envelope (overwrite, insert, delete): whatever the
    # template reader accepts, the general reader accepts with the same fields; whatever
    # it passes over is left to the general reader.
    try:
        data = dsse.envelope_bytes(payload, dsse.EVENT_PAYLOAD_TYPE, key_id, b"\x01" * 64)
    except NonCanonicalEntryError:
        return
    for mutated in _mutations(data, where, what):
        try:
            general: dsse.SignedEnvelope | None = dsse.parse_general(mutated)
        except NonCanonicalEntryError:
            general = None
        fast = dsse._parse_plain(mutated)
        if fast is not None:
            assert fast == general
        if general is not None:
            assert dsse.parse(mutated) == general
        else:
            with pytest.raises(NonCanonicalEntryError):
                dsse.parse(mutated)


@settings(max_examples=3000, deadline=None)
@given(st.floats(allow_nan=False, allow_infinity=False), st.sampled_from(["list", "dict"]))
def test_only_the_rfc8785_spelling_of_a_number_is_accepted(x: float, container: str) -> None:
    # The reader re-encodes what it decoded (with orjson) and compares: no other spelling of
    # a number, whatever its magnitude (Python, orjson and ECMAScript switch to exponents at
    # different places), may pass as canonical.
    import orjson

    try:
        reference = canonical_bytes_slow(x)
        parse_canonical(reference)  # e.g. 2.0**53 writes an integer RFC 8785 will not read
    except NonCanonicalEntryError:
        return
    spellings = {reference, repr(x).encode(), orjson.dumps(x), f"{x:.17g}".encode(), f"{x:f}".encode(),
                 f"{x:e}".encode(), json.dumps(x).encode()}
    for spelling in spellings:
        if float(spelling) != x:  # a rounded spelling is another number, with its own canonical form
            continue
        data = b"[" + spelling + b"]" if container == "list" else b'{"x":' + spelling + b"}"
        if spelling == reference:
            assert parse_canonical(data) == ([x] if container == "list" else {"x": x})
        else:
            with pytest.raises(NonCanonicalEntryError):
                parse_canonical(data)


@settings(max_examples=500, deadline=None)
@given(st.integers(), st.text(max_size=8))
def test_integers_and_strings_outside_the_fast_path_are_judged_by_rfc8785(n: int, text: str) -> None:
    value = {"n": n, "s": text, "t": [n, text]}
    try:
        reference = canonical_bytes_slow(value)
    except NonCanonicalEntryError:
        with pytest.raises(NonCanonicalEntryError):
            parse_canonical(json.dumps(value, sort_keys=True, separators=(",", ":")).encode())
        return
    assert parse_canonical(reference) == value
    assert canonical_bytes(value) == reference


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(alphabet="01", min_size=16, max_size=24),
                       st.integers(0, 10**6), min_size=1, max_size=8))
def test_long_digit_strings_stay_on_the_fast_path(counts: dict[str, int]) -> None:
    # Counts of circuits of 16 qubits or more have keys of 16+ digits: only a real integer
    # that long may send an entry to the slow rfc8785 package, never a string of digits.
    import qledger.ledger.canonical as canonical

    value = {"counts": counts, "shots": sum(counts.values())}
    data = canonical_bytes_slow(value)

    def refuse(_: object) -> bytes:
        raise AssertionError("the slow path was taken")

    original, canonical._rfc8785 = canonical._rfc8785, refuse
    try:
        assert canonical_bytes(value) == data
        assert parse_canonical(data) == value
    finally:
        canonical._rfc8785 = original
