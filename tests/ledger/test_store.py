"""The same suite against every store: appends, reads back, refusals, append-only tables."""

from __future__ import annotations

import json
import sqlite3
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest
from eventsourcing.persistence import StoredEvent

from qledger.ledger import dsse
from qledger.ledger.admin import add_key, init_store, open_admin_app
from qledger.ledger.app import LedgerApp
from qledger.ledger.canonical import canonical_bytes
from qledger.ledger.content import SCHEMA_VERSION, EntryContent
from qledger.ledger.errors import (
    BadSignatureError,
    ContentMismatchError,
    NonCanonicalEntryError,
    OversizedEntryError,
    RevokedKeyError,
    UnknownKeyError,
)
from qledger.ledger.keys import KeyStore, SigningKey
from qledger.ledger.verify import verify
from tests.conftest import Cluster
from tests.ledger.helpers import Note, RawStore, make_ledger, write_notes


def entry_count(app: LedgerApp) -> tuple[int, int]:
    with app.ledger.read_transaction() as cursor:
        cursor.execute(app.ledger.sql("SELECT COUNT(*) AS n FROM {entries}"))
        entries = int(cursor.fetchone()["n"])
        cursor.execute(app.ledger.sql("SELECT COUNT(*) AS n FROM {events}"))
        events = int(cursor.fetchone()["n"])
    return entries, events


def test_appends_are_gapless_signed_and_read_back(store_url: str, qledger_home: Path) -> None:
    app, _ = make_ledger(store_url, qledger_home)
    write_notes(app, "alice", 10, per_save=3)
    note = Note(principal="alice", title="kept")
    note.write(principal="alice", text="hello")
    app.save(note)
    loaded = app.repository.get(note.id)
    assert isinstance(loaded, Note) and loaded.lines == ["hello"] and loaded.title == "kept"
    report = verify(app.source())
    assert report.ok, report.finding
    assert report.tree_size == 3 + 10 * 2 + 2
    assert entry_count(app) == (report.tree_size, report.tree_size)


def test_init_is_idempotent(store_url: str, qledger_home: Path) -> None:
    keys = KeyStore(qledger_home)
    app = open_admin_app(store_url, keys)
    first = init_store(app, keys)
    second = init_store(open_admin_app(store_url, keys), keys)
    assert first.created_genesis and not second.created_genesis
    assert second.registered == []
    assert app.tree_size() == 2


def forged_stored_event(app: LedgerApp, signer: SigningKey, *, payload_bytes: int = 10,
                        version: int = 1) -> StoredEvent:
    note = Note(principal=signer.principal, title="x" * payload_bytes)
    event = note.collect_events()[0]
    stored = app.mapper.to_stored_event(event)
    content = EntryContent.from_bytes(dsse.parse(stored.state).payload)
    body = content.to_json() | {"stream_version": version}
    envelope = dsse.sign(canonical_bytes(body), signer)
    return StoredEvent(stored.originator_id, stored.originator_version, stored.topic,
                       envelope.canonical)


def assert_nothing_written(app: LedgerApp, before: tuple[int, int]) -> None:
    assert entry_count(app) == before
    assert verify(app.source()).ok


def test_bad_input_is_rejected_and_nothing_written(store_url: str, qledger_home: Path) -> None:
    app, alice = make_ledger(store_url, qledger_home)
    write_notes(app, "alice", 2)
    before = entry_count(app)
    good = forged_stored_event(app, alice)

    # A wrong signature: right key id, signature from another key.
    mallory = SigningKey.generate("alice")
    wrong = json.loads(good.state)
    wrong["signatures"][0]["sig"] = json.loads(forged_stored_event(app, mallory).state)[
        "signatures"][0]["sig"]
    with pytest.raises(BadSignatureError):
        app.recorder.insert_events([StoredEvent(good.originator_id, 1, good.topic,
                                                canonical_bytes(wrong))])
    # An unknown key.
    with pytest.raises(UnknownKeyError):
        app.recorder.insert_events([forged_stored_event(app, mallory)])
    # An oversized payload.
    with pytest.raises(OversizedEntryError):
        app.recorder.insert_events([forged_stored_event(app, alice, payload_bytes=1_100_000)])
    # A non-canonical envelope (same JSON, different spelling).
    spaced = json.dumps(json.loads(good.state), indent=2).encode()
    with pytest.raises(NonCanonicalEntryError):
        app.recorder.insert_events([StoredEvent(good.originator_id, 1, good.topic, spaced)])
    # Signed content that disagrees with the stored event's columns.
    with pytest.raises(ContentMismatchError):
        app.recorder.insert_events([forged_stored_event(app, alice, version=2)])
    # A batch with one bad entry writes none of it.
    with pytest.raises(UnknownKeyError):
        app.recorder.insert_events([good, forged_stored_event(app, mallory)])
    assert_nothing_written(app, before)
    # The good entry on its own goes in and continues the chain.
    app.recorder.insert_events([good])
    assert entry_count(app) == (before[0] + 1, before[1] + 1)
    assert verify(app.source()).ok


def test_unknown_principal_cannot_save(store_url: str, qledger_home: Path) -> None:
    app, _ = make_ledger(store_url, qledger_home)
    before = entry_count(app)
    with pytest.raises(UnknownKeyError, match="no signing key"):
        app.save(Note(principal="eve", title="x"))
    # A key the process holds but the ledger never registered is refused at append.
    app.add_signer(SigningKey.generate("eve"))
    with pytest.raises(UnknownKeyError):
        app.save(Note(principal="eve", title="x"))
    assert_nothing_written(app, before)


def test_revoked_key_is_refused_and_history_still_verifies(store_url: str, qledger_home: Path) -> None:
    app, alice = make_ledger(store_url, qledger_home)
    write_notes(app, "alice", 2)
    app.revoke_key("root", alice.key_id, "laptop lost")
    before = entry_count(app)
    with pytest.raises(RevokedKeyError):
        app.save(Note(principal="alice", title="after revocation"))
    assert_nothing_written(app, before)
    # A new key for the same principal works, and the old history stays valid.
    rotated = SigningKey.generate("alice")
    app.register_key("root", "alice", rotated.public, "client")
    app.add_signer(rotated)
    write_notes(app, "alice", 1)
    assert verify(app.source()).ok


def test_non_admin_cannot_change_keys(store_url: str, qledger_home: Path) -> None:
    app, _ = make_ledger(store_url, qledger_home)
    before = entry_count(app)
    with pytest.raises(Exception, match="admin"):
        app.register_key("alice", "bob", SigningKey.generate("bob").public, "client")
    assert_nothing_written(app, before)


def _superuser_execute(raw: RawStore, statement: str) -> None:
    if raw.is_pg:
        with psycopg.connect(raw.url.split("?")[0]) as conn:
            conn.execute(statement)
    else:
        with sqlite3.connect(raw.path) as conn:
            conn.execute(statement)


def test_database_refuses_update_and_delete(store_url: str, qledger_home: Path) -> None:
    app, _ = make_ledger(store_url, qledger_home)
    app.checkpoint(KeyStore(qledger_home).load("checkpointer"))
    raw = RawStore(store_url)
    column_of = {raw.events: "topic", raw.sql("{entries}"): "position",
                 raw.sql("{keys}"): "position", raw.sql("{checkpoints}"): "tree_size"}
    for table, column in column_of.items():
        statements = [f"UPDATE {table} SET {column} = {column}", f"DELETE FROM {table}"]
        if raw.is_pg:
            statements.append(f"TRUNCATE {table}")
        for statement in statements:
            with pytest.raises((sqlite3.DatabaseError, psycopg.Error), match="append-only"):
                _superuser_execute(raw, statement)
    assert verify(app.source()).ok and app.tree_size() == 3


def test_postgres_service_role_has_insert_and_select_only(pg_store_url: str, qledger_home: Path) -> None:
    make_ledger(pg_store_url, qledger_home)
    raw = RawStore(pg_store_url)
    service = pg_store_url.split("?")[0].replace("postgres@", "qledger_service@", 1)
    with psycopg.connect(service, autocommit=True) as conn:
        assert conn.execute(f"SELECT COUNT(*) FROM {raw.sql('{entries}')}").fetchone()[0] == 3
        for statement in (f"UPDATE {raw.sql('{entries}')} SET position = position",
                          f"DELETE FROM {raw.sql('{keys}')}", f"TRUNCATE {raw.events}"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
    # The service role can append through the application.
    keys = KeyStore(qledger_home)
    schema = pg_store_url.split("schema=")[1]
    app = LedgerApp(f"{service}?schema={schema}", [keys.load("alice")], create_tables=False)
    write_notes(app, "alice", 2)
    assert verify(app.source()).ok and app.tree_size() == 7


def test_add_key_via_admin_helper(store_url: str, qledger_home: Path) -> None:
    app, _ = make_ledger(store_url, qledger_home)
    bob = add_key(app, KeyStore(qledger_home), "bob", "executor")
    assert app.keyring().keys[bob.key_id]["purpose"] == "executor"
    assert SCHEMA_VERSION == 1


def test_checkpoints_are_made_every_n_entries(store_url: str, qledger_home: Path) -> None:
    from qledger.ledger.app import CheckpointPolicy
    from qledger.ledger.checkpoint import parse_note

    app, _ = make_ledger(store_url, qledger_home)
    app.checkpoint_policy = CheckpointPolicy(KeyStore(qledger_home).load("checkpointer"),
                                             every=4, seconds=3600)
    write_notes(app, "alice", 6)  # 12 entries after the 3 of set-up
    sizes = [parse_note(n).checkpoint.tree_size for n in app.source().checkpoint_notes()]
    assert sizes == [5, 9, 13]
    report = verify(app.source())
    assert report.ok and report.checkpoints_checked == 3


def test_a_failed_checkpoint_does_not_fail_the_save(store_url: str, qledger_home: Path,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    from eventsourcing.persistence import OperationalError

    from qledger.ledger.app import CheckpointPolicy

    app, _ = make_ledger(store_url, qledger_home)
    app.checkpoint_policy = CheckpointPolicy(KeyStore(qledger_home).load("checkpointer"), every=1)

    def unavailable(key: object) -> str:
        raise OperationalError("checkpoint table locked")

    monkeypatch.setattr(app, "checkpoint", unavailable)
    entries, events = entry_count(app)
    write_notes(app, "alice", 1)  # committed: the save must say so, whatever the checkpoint did
    assert entry_count(app) == (entries + 2, events + 2)
    assert "checkpoint not made: checkpoint table locked" in caplog.text


def test_postgres_windows_use_the_index_plan_without_statistics(pg_store_url: str,
                                                                  qledger_home: Path) -> None:
    # A store that was never analysed (autovacuum off, or loaded since) has no statistics:
    # the planner then scanned (and sorted) the whole entries table for every window that
    # verify reads.  Both ways verify reads windows must get the ordered index plan.
    from qledger.ledger.store.reader import StoreSource

    app, _ = make_ledger(pg_store_url, qledger_home)
    write_notes(app, "alice", 5)
    source = app.source()
    assert isinstance(source, StoreSource)
    reader = source.range_reader()
    assert reader is not None
    explain = "EXPLAIN (COSTS OFF) " + reader.sql

    def plan(rows: list[tuple[str]]) -> str:
        return "\n".join(row[0] for row in rows)

    with psycopg.connect(**dict(reader.connect_args)) as conn:  # as a worker connects
        worker_plan = plan(conn.execute(explain, (0, 1000)).fetchall())
    with app.ledger.read_transaction() as cursor:  # as `qledger verify` reads in-process
        app.ledger.plan_windows(cursor)
        cursor.execute(explain, (0, 1000))
        own_plan = "\n".join(row["QUERY PLAN"] for row in cursor.fetchall())
    for text in (worker_plan, own_plan):
        assert "Index Scan using ledger_entries_pkey" in text, text
        assert "Seq Scan" not in text and "Sort" not in text and "Gather" not in text, text
    assert reader(0, 3) == list(source.entries(1, 3))


def test_postgres_batches_go_in_binary(pg_store_url: str, qledger_home: Path) -> None:
    # The library's own statement, with the array of events as a binary parameter: in text
    # every envelope is spelt in hex and escaped by regular expressions.  If the library's
    # statement changes shape, this says so instead of the speed quietly going.
    from qledger.ledger.store.postgres import LedgerPostgresRecorder

    app, _ = make_ledger(pg_store_url, qledger_home)
    assert isinstance(app.ledger, LedgerPostgresRecorder)
    statement = app.ledger.insert_events_statement.as_string(None)
    assert "unnest(%b::" in statement and statement.endswith("RETURNING notification_id")
    write_notes(app, "alice", 3, per_save=3)
    assert verify(app.source()).ok


@pytest.mark.postgres
def test_reads_after_a_postgres_restart_need_no_retry(restartable_pg: Cluster, qledger_home: Path) -> None:
    """A restart cuts every pooled connection; a reader must not be the one who finds out.
    Each read below comes on a connection the pool held from before the restart."""
    app, _ = make_ledger(restartable_pg.url, qledger_home)
    try:
        write_notes(app, "alice", 3)
        source = app.source()
        with ThreadPoolExecutor(4) as pool:  # several connections taken and given back to the pool
            sizes = list(pool.map(lambda _: source.tree_size(), range(8)))
        restartable_pg.stop("immediate")
        restartable_pg.start()
        with ThreadPoolExecutor(4) as pool:
            after = list(pool.map(lambda _: (source.tree_size(), len(source.stream_entries(
                uuid.UUID(int=0), 0))), range(8)))
        assert after == [(sizes[0], 0)] * 8
        write_notes(app, "alice", 1)
        assert verify(source).ok
    finally:
        app.close()  # before the cluster goes: pools end in this thread, not a collector's
