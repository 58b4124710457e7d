"""Key validity by position: one rule (``registry.valid_at``), used by appends, the whole-ledger
verifier, the check of one stream, checkpoints and bundles alike.

The revocation cut-off: the entry at ``revoked_at`` is the KeyRevoked entry itself, and a key
may sign its own revocation (an admin retiring a compromised key with that key), so a key is
valid up to and including ``revoked_at`` and at no position after it.  That is what the store
and the ordered pass accept; a stricter check elsewhere would call a valid ledger tampered.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qledger.ledger.errors import RevokedKeyError, UnknownKeyError
from qledger.ledger.keyring import KeyRing
from qledger.ledger.keys import SigningKey
from qledger.ledger.registry import KeyRecord, KeyRegistry, valid_at, valid_for_checkpoint
from qledger.ledger.verify import Tamper, check_stream, verify
from tests.ledger.helpers import RawStore, make_ledger, write_notes

positions = st.integers(min_value=1, max_value=10_000)


gaps = st.one_of(st.none(), st.integers(min_value=0, max_value=50))
near = st.integers(min_value=-3, max_value=60)  # positions around the interval's ends


@given(positions, gaps, near)
def test_a_key_is_valid_on_one_interval(registered: int, gap: int | None, offset: int) -> None:
    revoked = None if gap is None else registered + 1 + gap  # a revocation comes after the registration
    position = max(1, registered + offset)
    first = 1 if registered == 1 else registered + 1  # genesis pins its key at position 1 itself
    last = revoked if revoked is not None else float("inf")
    assert valid_at(registered, revoked, position) == (first <= position <= last)
    # A checkpoint of n entries is signed as the log stands after entry n.
    assert valid_for_checkpoint(registered, revoked, position) == valid_at(registered, revoked, position + 1)


@given(positions, gaps, near)
def test_the_registry_refuses_exactly_where_the_rule_says(registered: int, gap: int | None,
                                                         offset: int) -> None:
    position = max(1, registered + offset)
    registry = KeyRegistry()
    key = SigningKey.from_seed("alice", bytes(32))
    revoked = None if gap is None else registered + 1 + gap
    registry.keys[key.key_id] = KeyRecord(key.key_id, "alice", key.public, "client", registered, revoked)
    if valid_at(registered, revoked, position):
        assert registry.signer_at(key.key_id, position).principal == "alice"
    else:
        with pytest.raises((UnknownKeyError, RevokedKeyError)):
            registry.signer_at(key.key_id, position)


def test_a_key_signs_its_own_revocation_and_nothing_after(store_url: str, qledger_home: Path) -> None:
    app, _ = make_ledger(store_url, qledger_home)
    retiring = SigningKey.generate("admin-2")
    app.register_key("root", "admin-2", retiring.public, "admin")
    app.add_signer(retiring)
    app.revoke_key("admin-2", retiring.key_id, "retired by itself")  # signed by the key it revokes
    revoked_at = app.tree_size()
    with pytest.raises(RevokedKeyError):
        app.register_key("admin-2", "bob", SigningKey.generate("bob").public, "client")
    assert app.tree_size() == revoked_at
    assert verify(app.source()).ok
    # The check of one stream applies the same rule: the key ring's stream verifies too.
    source = app.source()
    rows = source.stream_entries(KeyRing.create_id(app.require_origin()), 0)
    assert rows[-1].position == revoked_at
    assert check_stream(rows, source.key_rows(), app.origin, app.inclusion_proof) is None


def test_the_check_of_one_stream_finds_an_altered_entry(store_url: str, qledger_home: Path) -> None:
    app, _ = make_ledger(store_url, qledger_home)
    write_notes(app, "alice", 3)
    source = app.source()
    stream = source.entry_at(app.tree_size())
    assert stream is not None and stream.originator_id is not None
    from uuid import UUID

    rows = source.stream_entries(UUID(stream.originator_id), 0)
    assert check_stream(rows, source.key_rows(), app.origin, app.inclusion_proof) is None
    raw = RawStore(store_url)
    position = rows[-1].position
    raw.set_state(position, raw.state_at(position).replace(b'"payload":"', b'"payload":"e', 1))
    altered = app.source().stream_entries(UUID(stream.originator_id), 0)
    finding = check_stream(altered, source.key_rows(), app.origin, app.inclusion_proof)
    assert finding is not None and finding.position == position and finding.kind == Tamper.PAYLOAD_ALTERED
