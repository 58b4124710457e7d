from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qledger.ledger.checkpoint import Checkpoint, parse_note
from qledger.ledger.errors import NoteFormatError
from qledger.ledger.keys import SigningKey

KEY = SigningKey.from_seed("checkpointer", bytes(32))
OTHER = SigningKey.from_seed("checkpointer", bytes([1] * 32))


def test_note_round_trip_and_format() -> None:
    note = Checkpoint("example.com/log", 42, bytes(range(32))).sign(KEY)
    lines = note.split("\n")
    assert lines[:4] == ["example.com/log", "42", "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=", ""]
    assert lines[4].startswith("\u2014 example.com/log ")
    signed = parse_note(note)
    assert signed.checkpoint == Checkpoint("example.com/log", 42, bytes(range(32)))
    assert signed.signed_by("example.com/log", KEY.public)
    assert not signed.signed_by("example.com/log", OTHER.public)
    assert not signed.signed_by("other/log", KEY.public)


@settings(max_examples=150, deadline=None)
@given(st.integers(min_value=0))
def test_any_changed_character_breaks_the_note(where: int) -> None:
    note = Checkpoint("example.com/log", 7, bytes(32)).sign(KEY)
    index = where % len(note)
    replacement = "A" if note[index] != "A" else "B"
    tampered = note[:index] + replacement + note[index + 1:]
    try:
        signed = parse_note(tampered)
    except NoteFormatError:
        return
    assert not signed.signed_by("example.com/log", KEY.public)


def test_unsigned_note_is_refused() -> None:
    with pytest.raises(NoteFormatError):
        parse_note("example.com/log\n1\nAAAA\n")
