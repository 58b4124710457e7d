"""An auditor's saved checkpoint against later ones: every honest pair of trees passes, every
rewritten, forked or foreign one fails (property-based over the sizes of a real ledger)."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qledger.ledger.admin import CHECKPOINTER
from qledger.ledger.app import LedgerApp
from qledger.ledger.checkpoint import Checkpoint, SignedNote, parse_note, verifier_key
from qledger.ledger.errors import CheckpointTrustError, FormatError, InconsistentHistoryError
from qledger.ledger.keys import KeyStore, SigningKey
from qledger.ledger.saved_checkpoint import (
    check_extension,
    checkpoint_note,
    pinned_checkpoint_key,
    proof_path,
    trusted,
)
from tests.ledger.helpers import make_ledger, write_notes

SIZE = 15


@pytest.fixture(scope="module")
def ledger(tmp_path_factory: pytest.TempPathFactory) -> tuple[LedgerApp, SigningKey]:
    root = tmp_path_factory.mktemp("saved")
    app, alice = make_ledger(f"sqlite:///{root / 'ledger.db'}", root / "home")
    write_notes(app, alice.principal, (SIZE - app.tree_size()) // 2)  # two entries a note
    assert app.tree_size() == SIZE
    return app, KeyStore(root / "home").load(CHECKPOINTER)


def note_at(app: LedgerApp, key: SigningKey, size: int, root: bytes | None = None) -> str:
    if root is None:
        root = bytes.fromhex(app.consistency_proof(size, SIZE)["first_root"])
    return Checkpoint(app.require_origin(), size, root).sign(key)


def path(app: LedgerApp, first: int, second: int) -> list[bytes]:
    if first == second:
        return []
    return proof_path(json.dumps(app.consistency_proof(first, second)), first, second)


def parsed(note: str, key: SigningKey) -> SignedNote:
    return trusted(note, key.public)


sizes = st.tuples(st.integers(1, SIZE), st.integers(1, SIZE)).map(sorted)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sizes)
def test_every_honest_pair_of_trees_is_one_history(ledger: tuple[LedgerApp, SigningKey],
                                                   pair: list[int]) -> None:
    app, key = ledger
    first, second = pair
    older, newer = parsed(note_at(app, key, first), key), parsed(note_at(app, key, second), key)
    proof = path(app, first, second)
    told = check_extension(older, newer, proof).describe()
    assert told.startswith("extends" if first < second else "the same")
    assert check_extension(newer, older, proof).saved_size == second  # a bundle older than the save


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sizes, st.integers(0, 31), st.data())
def test_a_rewritten_history_fails(ledger: tuple[LedgerApp, SigningKey], pair: list[int], bit: int,
                                   data: st.DataObject) -> None:
    app, key = ledger
    first, second = pair
    newer = parsed(note_at(app, key, second), key)
    honest_root = bytes.fromhex(app.consistency_proof(first, SIZE)["first_root"])
    forged = bytearray(honest_root)
    forged[bit] ^= 1 << data.draw(st.integers(0, 7))
    # The saved tree's root differs from the one the ledger now proves: signed, but another history.
    older = parsed(note_at(app, key, first, bytes(forged)), key)
    with pytest.raises(InconsistentHistoryError):
        check_extension(older, newer, path(app, first, second))
    # A tampered proof fails too.
    proof = path(app, first, second)
    if proof:
        index = data.draw(st.integers(0, len(proof) - 1))
        proof[index] = bytes(b ^ 0xFF for b in proof[index])
        with pytest.raises(InconsistentHistoryError):
            check_extension(parsed(note_at(app, key, first), key), newer, proof)


def test_a_checkpoint_of_another_key_or_log_is_not_trusted(ledger: tuple[LedgerApp, SigningKey]) -> None:
    app, key = ledger
    note = note_at(app, key, 5)
    with pytest.raises(CheckpointTrustError, match="not signed by the pinned key"):
        trusted(note, SigningKey.generate("mallory").public)
    with pytest.raises(CheckpointTrustError, match="not the saved"):
        trusted(note, key.public, origin="another.example/log")
    other = parse_note(Checkpoint("another.example/log", 5, parse_note(note).checkpoint.root_hash).sign(key))
    with pytest.raises(CheckpointTrustError, match="two logs"):
        check_extension(parsed(note, key), other, [])


def test_pinned_keys_and_saved_files_are_read_in_their_published_forms(
        ledger: tuple[LedgerApp, SigningKey]) -> None:
    app, key = ledger
    assert pinned_checkpoint_key(key.public.raw.hex() + "\n") == (key.public, None)
    vkey = verifier_key(app.require_origin(), key.public)
    assert pinned_checkpoint_key(vkey) == (key.public, app.require_origin())
    name, _, encoded = vkey.split("+", 2)  # base64 may hold "+" too
    with pytest.raises(FormatError):
        pinned_checkpoint_key(f"{name}+{'0' * 8}+{encoded}")  # the key hash does not match
    note = note_at(app, key, 4)
    assert checkpoint_note(json.dumps({"tree_size": 4, "note": note})) == note == checkpoint_note(note)
    with pytest.raises(FormatError):
        checkpoint_note('{"tree_size": 4}')
    with pytest.raises(FormatError, match="from size 2 to 5"):
        proof_path(json.dumps(app.consistency_proof(2, 5)), 3, 5)


def test_two_trees_of_one_size_must_be_one_tree(ledger: tuple[LedgerApp, SigningKey]) -> None:
    app, key = ledger
    honest, forged = note_at(app, key, 7), note_at(app, key, 7, bytes(32))
    with pytest.raises(InconsistentHistoryError, match="two different trees of 7 entries"):
        check_extension(parsed(honest, key), parsed(forged, key), [])
