"""Tamper with raw SQL as a superuser (triggers disabled) and check verify names position and kind.

Ledger layout in every test: 1 genesis, 2 checkpoint key, 3 alice's key, 4..13 alice's
notes (5 aggregates x 2 events), a checkpoint at 13, then 14..17 more notes and a
checkpoint at 17.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from qledger.cli import app as cli
from qledger.ledger import dsse
from qledger.ledger.app import LedgerApp
from qledger.ledger.canonical import canonical_bytes
from qledger.ledger.keys import KeyStore, SigningKey
from qledger.ledger.verify import Tamper, verify
from tests.ledger.helpers import RawStore, make_ledger, write_notes


@pytest.fixture
def ledger(store_url: str, qledger_home: Path) -> tuple[LedgerApp, RawStore]:
    app, _ = make_ledger(store_url, qledger_home)
    checkpointer = KeyStore(qledger_home).load("checkpointer")
    write_notes(app, "alice", 5, per_save=2)
    app.checkpoint(checkpointer)
    write_notes(app, "alice", 2)
    app.checkpoint(checkpointer)
    assert app.tree_size() == 17 and verify(app.source()).ok
    return app, RawStore(store_url)


def resign(raw: RawStore, position: int, key: SigningKey, change: Callable[[dict], None]) -> None:
    """Replace the entry's envelope with one signed by ``key`` over changed content."""
    envelope = dsse.parse(raw.state_at(position))
    content = json.loads(envelope.payload)
    change(content)
    raw.set_state(position, dsse.sign(canonical_bytes(content), key).canonical)
    raw.rechain()


def alter_byte(raw: RawStore) -> None:
    # One character inside the base64 payload: still well-formed, different content.
    state = bytearray(raw.state_at(7))
    where = state.index(b'"payload":"') + 40
    state[where] = ord("B") if state[where] != ord("B") else ord("C")
    raw.set_state(7, bytes(state))


def bad_signature(raw: RawStore) -> None:
    # Payload changed, old signature kept, every hash recomputed: only the signature tells.
    envelope = json.loads(raw.state_at(7))
    content = json.loads(dsse.parse(raw.state_at(7)).payload)
    content["payload"]["text"] = "forged"
    import base64
    envelope["payload"] = base64.b64encode(canonical_bytes(content)).decode()
    raw.set_state(7, canonical_bytes(envelope))
    raw.rechain()


def unknown_key(raw: RawStore) -> None:
    resign(raw, 7, SigningKey.generate("alice"), lambda c: c["payload"].update(text="forged"))


def revoked_key(home: Path) -> Callable[[RawStore, LedgerApp], None]:
    def tamper(raw: RawStore, app: LedgerApp) -> None:
        alice = KeyStore(home).load("alice")
        app.revoke_key("root", alice.key_id, "stolen")  # position 18, legitimately
        write_notes_as_root(app)  # 19, 20 by root
        resign(raw, 19, alice, lambda c: c.update(principal="alice"))
    return tamper


def forge_checkpoint_root(raw: RawStore) -> None:
    """Claim the size-17 root for size 13 (the signature no longer matches either)."""
    notes = {int(n.split("\n")[1]): n for (n,) in raw.execute("SELECT note FROM {checkpoints}")}
    lines = notes[13].split("\n")
    lines[2] = notes[17].split("\n")[2]
    raw.execute("UPDATE {checkpoints} SET note = %s WHERE tree_size = 13", ("\n".join(lines),))


def write_notes_as_root(app: LedgerApp) -> None:
    write_notes(app, "root", 1)


CASES: dict[str, tuple[Callable[[RawStore], None], int, Tamper]] = {
    "payload altered": (alter_byte, 7, Tamper.PAYLOAD_ALTERED),
    "bad signature": (bad_signature, 7, Tamper.BAD_SIGNATURE),
    "unknown key": (unknown_key, 7, Tamper.UNKNOWN_KEY),
    "missing entry": (lambda r: r.execute("DELETE FROM {entries} WHERE position = 9"), 9,
                      Tamper.MISSING_ENTRY),
    "missing event row": (lambda r: r.execute(
        "DELETE FROM {events} WHERE {nid} = (SELECT notification_id FROM {entries} WHERE position = 9)"),
        9, Tamper.MISSING_ENTRY),
    "reordered": (lambda r: (r.execute("UPDATE {entries} SET position = -6 WHERE position = 6"),
                             r.execute("UPDATE {entries} SET position = 6 WHERE position = 5"),
                             r.execute("UPDATE {entries} SET position = 5 WHERE position = -6")),
                  5, Tamper.REORDERED),
    "chain broken": (lambda r: r.execute("UPDATE {entries} SET chain_hash = leaf_hash WHERE position = 11"),
                     11, Tamper.CHAIN_BROKEN),
    "merkle node altered": (lambda r: r.execute(
        "UPDATE {entries} SET subtree_hashes = leaf_hash WHERE position = 12"), 12,
        Tamper.MERKLE_NODE_ALTERED),
    "checkpoint mismatch": (lambda r: forge_checkpoint_root(r), 13, Tamper.CHECKPOINT_MISMATCH),
    "checkpoint duplicated": (lambda r: r.execute(
        "UPDATE {checkpoints} SET note = (SELECT note FROM {checkpoints} WHERE tree_size = 17) "
        "WHERE tree_size = 13"), 17, Tamper.CHECKPOINT_MISMATCH),
    "truncated tail": (lambda r: (r.execute("DELETE FROM {events} WHERE {nid} IN "
                                            "(SELECT notification_id FROM {entries} WHERE position > 15)"),
                                  r.execute("DELETE FROM {entries} WHERE position > 15")),
                       16, Tamper.TRUNCATED_TAIL),
    "unchained event": (lambda r: r.execute(
        "INSERT INTO {events} (originator_id, originator_version, topic, state) "
        "SELECT originator_id, originator_version + 100, topic, state FROM {events} "
        "WHERE {nid} = (SELECT notification_id FROM {entries} WHERE position = 5)"),
        18, Tamper.UNCHAINED_EVENT),
    "key table altered": (lambda r: r.execute("UPDATE {keys} SET purpose = 'admin' WHERE position = 3"),
                          3, Tamper.KEY_TABLE_ALTERED),
    # The key table is only a hint to whoever checks signatures: with a wrong public key in it,
    # every signature by that key is checked again with the key its entry registered (read
    # again from the store in parallel verify), and the table itself is reported.
    "key table public key altered": (lambda r: r.execute(
        "UPDATE {keys} SET public_key = (SELECT public_key FROM {keys} WHERE position = 2) "
        "WHERE position = 3"), 3, Tamper.KEY_TABLE_ALTERED),
}


@pytest.mark.parametrize("case", list(CASES))
def test_verify_names_first_bad_position_and_kind(
    ledger: tuple[LedgerApp, RawStore], case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import qledger.ledger.verify as verifier

    app, raw = ledger
    tamper, position, kind = CASES[case]
    tamper(raw)
    report = verify(app.source())
    assert report.finding is not None, f"{case} went unnoticed"
    assert (report.finding.position, report.finding.kind) == (position, kind), report.finding
    # In parallel, workers read windows of 4 positions themselves: the same first break.
    assert app.source().range_reader() is not None
    monkeypatch.setattr(verifier, "BATCH", 4)
    assert verify(app.source(), jobs=2) == report
    # The same through the CLI: exit 1 with the position and kind on one line.
    result = CliRunner().invoke(cli, ["verify", "--store", raw.url])
    assert result.exit_code == 1
    assert f"position {position}: {kind.value}" in result.output


def test_revoked_key_signature_is_caught(ledger: tuple[LedgerApp, RawStore], qledger_home: Path) -> None:
    app, raw = ledger
    root = KeyStore(qledger_home).load("root")
    app.add_signer(root)
    revoked_key(qledger_home)(raw, app)
    report = verify(app.source())
    assert report.finding is not None
    assert (report.finding.position, report.finding.kind) == (19, Tamper.REVOKED_KEY)


def test_parallel_verify_finds_the_same_break(ledger: tuple[LedgerApp, RawStore]) -> None:
    app, raw = ledger
    bad_signature(raw)
    report = verify(app.source(), jobs=2)
    assert report.finding is not None
    assert (report.finding.position, report.finding.kind) == (7, Tamper.BAD_SIGNATURE)


@pytest.mark.parametrize("tamper", [None, bad_signature, alter_byte], ids=["intact", "signature", "byte"])
def test_parallel_verify_over_many_batches_agrees_with_serial(
        ledger: tuple[LedgerApp, RawStore], monkeypatch: pytest.MonkeyPatch,
        tamper: Callable[[RawStore], None] | None) -> None:
    # Batches of 3 spread the 17 entries over 6 batches, so later batches are in the workers'
    # hands while an earlier one is settled: the first break must still be the one reported.
    import qledger.ledger.verify as verifier

    app, raw = ledger
    if tamper is not None:
        tamper(raw)
    monkeypatch.setattr(verifier, "BATCH", 3)
    serial, parallel = verify(app.source()), verify(app.source(), jobs=2)
    assert parallel == serial
    assert serial.ok == (tamper is None)
    assert serial.entries_checked == (17 if tamper is None else 6)


def test_verify_range(ledger: tuple[LedgerApp, RawStore]) -> None:
    app, raw = ledger
    alter_byte(raw)
    assert verify(app.source(), start=8).ok
    assert verify(app.source(), start=1, stop=6).ok
    finding = verify(app.source(), start=5, stop=9).finding
    assert finding is not None and finding.position == 7
