"""RFC 8785 (JSON Canonicalization Scheme): the one serializer applied before anything is signed.

Everything that is hashed or signed passes through here, so there is exactly one seam
where bytes are produced from values and checked to be canonical.

Speed: the ``rfc8785`` package is pure Python and was the largest cost of an append.  For
the JSON our entries hold, the C ``json`` encoder with sorted keys and no spaces produces
the same bytes as RFC 8785; it differs only on (1) numbers in exponent notation or with an
integral value (ECMAScript number formatting; see ``_check_float``), (2) integers outside
I-JSON's ±(2**53 - 1), which RFC 8785 refuses, and (3) the order of keys mixing
U+E000..U+FFFF with characters beyond the BMP (RFC 8785 sorts by UTF-16 code units).
Whenever any of these could occur, or the fast path cannot prove a spelling canonical,
``rfc8785`` decides.  ``tests/ledger/test_canonical_and_dsse.py`` checks the paths agree.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson
import rfc8785

from qledger.ledger.errors import NonCanonicalEntryError

JSONValue = Any

_BEYOND_BMP = re.compile(rb"[\xf0-\xff]")  # lead bytes of 4-byte UTF-8 sequences
_MAX_SAFE_DIGITS = 15  # every integer of at most 15 digits is within ±(2**53 - 1)


class _NeedsRFC8785(Exception):
    pass


def _check_float(text: str) -> float:
    # Python's repr and ECMAScript's Number::toString both print the shortest digits that
    # round-trip; they differ only in notation: exponents (Python from 1e16 and below 1e-4,
    # ECMAScript from 1e21 and below 1e-6) and integral values ("3.0" against "3", "-0.0"
    # against "0").  Plain-notation, non-integral numbers are spelt the same by both.
    if "e" in text or "E" in text or text.endswith(".0"):
        raise _NeedsRFC8785
    return float(text)


def _check_int(text: str) -> int:
    if len(text.lstrip("-")) > _MAX_SAFE_DIGITS:
        raise _NeedsRFC8785
    return int(text)


# Made once: json.loads and json.dumps with options build a new coder on every call,
# which cost a third of checking an entry's content.  Integers are checked one by one only
# where a long run of digits shows up (_loads_simple): most entries have none.
_DECODER = json.JSONDecoder(parse_float=_check_float)
_DECODER_CHECKING_INTS = json.JSONDecoder(parse_float=_check_float, parse_int=_check_int)
_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                            allow_nan=False)


# Every run of digits, spelt as zeros, so one substring search finds any run longer than
# _MAX_SAFE_DIGITS: an integer beyond I-JSON's range, or a long digit string (a 16-qubit
# bitstring), which only a decoder that checks each integer can tell apart.
_DIGITS_AS_ZEROS = bytes.maketrans(b"123456789", b"000000000")
_TOO_MANY_DIGITS = b"0" * (_MAX_SAFE_DIGITS + 1)


def _loads_simple(data: bytes) -> JSONValue:
    """Parse JSON, raising _NeedsRFC8785 if it holds anything the fast path cannot judge."""
    if not data.isascii() and _BEYOND_BMP.search(data):
        raise _NeedsRFC8785
    # Strict UTF-8 (no BOM, no other encoding guessed): canonical JSON is UTF-8.
    if _TOO_MANY_DIGITS in data.translate(_DIGITS_AS_ZEROS):
        return _DECODER_CHECKING_INTS.decode(data.decode())
    return _DECODER.decode(data.decode())


def _dumps_fast(value: JSONValue) -> bytes:
    return _ENCODER.encode(value).encode()


def _redump_decoded(value: JSONValue) -> bytes:
    """``_dumps_fast`` for a value ``_loads_simple`` just returned (plain JSON types only,
    every float plain-notation and non-integral, every integer of at most 15 digits), where
    orjson writes the same bytes ten times faster.  Not for values from anywhere else:
    orjson also writes types the standard encoder refuses (UUID, Enum), and integral
    floats as "1.0"."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def _rfc8785(value: JSONValue) -> bytes:
    try:
        return bytes(rfc8785.dumps(value))
    except (rfc8785.CanonicalizationError, TypeError, ValueError) as exc:
        raise NonCanonicalEntryError(f"value cannot be canonicalised: {exc}") from exc


def canonical_bytes(value: JSONValue) -> bytes:
    """Serialise ``value`` as RFC 8785 canonical JSON."""
    try:
        fast = _dumps_fast(value)
        _loads_simple(fast)
        return fast
    except (_NeedsRFC8785, TypeError, ValueError, UnicodeEncodeError, RecursionError):
        data = _rfc8785(value)
        # e.g. the float 2.0**53 canonicalises to an integer literal that RFC 8785 then
        # refuses to read back: refuse to write what no reader could check.
        parse_canonical(data)
        return data


def canonical_bytes_slow(value: JSONValue) -> bytes:
    """Always the ``rfc8785`` package: the reference the fast path is tested against."""
    return _rfc8785(value)


def parse_canonical(data: bytes) -> JSONValue:
    """Parse ``data`` and insist it is exactly the canonical form of what it encodes.

    Accepting only canonical bytes means one value has one byte string, so a hash or a
    signature can never be made to mean two things.
    """
    try:
        value = _loads_simple(data)
        fast = True
    except _NeedsRFC8785:
        fast = False
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise NonCanonicalEntryError(f"not JSON: {exc}") from exc
    if fast:
        try:
            if _redump_decoded(value) == data:
                return value
        except (ValueError, UnicodeEncodeError, TypeError):  # orjson.JSONEncodeError is a TypeError
            pass
        # Not proven canonical by the fast path (e.g. ECMAScript writes 0.00006 where Python
        # writes 6e-05): the rfc8785 package decides.
    try:
        value = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise NonCanonicalEntryError(f"not JSON: {exc}") from exc
    if _rfc8785(value) != data:
        raise NonCanonicalEntryError("JSON is not in RFC 8785 canonical form")
    return value
