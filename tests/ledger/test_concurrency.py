"""Several writer processes at once, and a writer killed with SIGKILL mid-batch."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from qledger.ledger.admin import open_admin_app
from qledger.ledger.app import LedgerApp
from qledger.ledger.errors import RevokedKeyError
from qledger.ledger.keys import KeyStore
from qledger.ledger.verify import verify
from tests.ledger.helpers import make_ledger, write_notes

REPO = Path(__file__).resolve().parents[2]


def spawn(url: str, home: Path, count: int, batch: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.ledger.writer_process", url, str(home), str(count), str(batch)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def positions(app: LedgerApp) -> list[int]:
    with app.ledger.read_transaction() as cursor:
        cursor.execute(app.ledger.sql("SELECT position FROM {entries} ORDER BY position"))
        return [int(r["position"]) for r in cursor.fetchall()]


def test_eight_writer_processes_never_fork_the_chain(store_url: str, qledger_home: Path) -> None:
    app, _ = make_ledger(store_url, qledger_home)
    writers = [spawn(store_url, qledger_home, 15, batch) for batch in (1, 2, 3, 5, 1, 2, 3, 5)]
    for w in writers:
        _, err = w.communicate(timeout=180)
        assert w.returncode == 0, err
    expected = 3 + 8 * 15 * 2
    assert positions(app) == list(range(1, expected + 1))  # gapless, no duplicates
    report = verify(app.source())
    assert report.ok, report.finding
    assert report.tree_size == expected


def test_sigkill_mid_batch_leaves_no_partial_entry(store_url: str, qledger_home: Path) -> None:
    app, _ = make_ledger(store_url, qledger_home)
    batch = 40  # aggregates per save: 80 entries per transaction
    writer = spawn(store_url, qledger_home, 100_000, batch)
    assert writer.stdout is not None and writer.stdout.readline().strip() == "ready"
    deadline = time.monotonic() + 60
    while app.tree_size() < 3 + 5 * 2 * batch and time.monotonic() < deadline:
        time.sleep(0.02)
    writer.send_signal(signal.SIGKILL)
    writer.wait(timeout=30)
    assert writer.returncode == -signal.SIGKILL
    size = app.tree_size()
    assert (size - 3) % (2 * batch) == 0, f"a partial batch was committed: {size - 3} entries"
    assert positions(app) == list(range(1, size + 1))
    assert verify(app.source()).ok
    # The next append continues the chain.
    survivor = LedgerApp(store_url, [app.mapper.signers["alice"]],  # type: ignore[attr-defined]
                         create_tables=False)
    write_notes(survivor, "alice", 1)
    report = verify(survivor.source())
    assert report.ok and report.tree_size == size + 2


def second_writer(store_url: str, qledger_home: Path) -> LedgerApp:
    """Another application on the same store, as another process would be, holding alice's key."""
    keys = KeyStore(qledger_home)
    app = open_admin_app(store_url, keys, create_tables=False)
    app.add_signer(keys.load("alice"))
    return app


def test_writers_taking_turns_chain_onto_each_other(store_url: str, qledger_home: Path) -> None:
    # A writer that was alone chains onto the head it wrote last without asking the table;
    # when another writer appended meanwhile, that head is stale and must cost a retry, not a fork.
    first, _ = make_ledger(store_url, qledger_home)
    second = second_writer(store_url, qledger_home)
    for turn in range(6):
        write_notes(first if turn % 2 == 0 else second, "alice", 2, per_save=2 if turn % 3 else 1)
        write_notes(first, "alice", 1)
    expected = 3 + 6 * 2 * 2 + 6 * 2
    assert positions(first) == list(range(1, expected + 1))
    report = verify(first.source())
    assert report.ok, report.finding
    assert report.tree_size == expected


def test_a_revocation_by_another_writer_binds_a_writer_with_a_stale_head(
        store_url: str, qledger_home: Path) -> None:
    first, alice = make_ledger(store_url, qledger_home)
    write_notes(first, "alice", 2)
    write_notes(first, "alice", 2)  # `first` now believes it is the only writer
    admin = open_admin_app(store_url, KeyStore(qledger_home), create_tables=False)
    admin.revoke_key("root", alice.key_id, "laptop lost")
    size = first.tree_size()
    with pytest.raises(RevokedKeyError):
        write_notes(first, "alice", 1)
    assert positions(first) == list(range(1, size + 1))
    assert verify(first.source()).ok


@pytest.mark.reliability
def test_concurrent_checkpoints_of_one_size_are_one_checkpoint(store_url: str, qledger_home: Path) -> None:
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from qledger.ledger.admin import CHECKPOINTER

    app, alice = make_ledger(store_url, qledger_home)
    keys = KeyStore(qledger_home)
    # Several servers share a PostgreSQL store; an SQLite file has one server (its threads race).
    servers = [app, open_admin_app(store_url, keys) if app.store.is_postgres else app]
    key = keys.load(CHECKPOINTER)
    for _ in range(5):
        write_notes(app, alice.principal, 1)
        barrier = threading.Barrier(8)

        def sign(i: int, barrier: threading.Barrier = barrier) -> str:
            barrier.wait(timeout=30)
            return servers[i % 2].checkpoint(key)

        with ThreadPoolExecutor(8) as pool:
            notes = list(pool.map(sign, range(8)))
        assert len(set(notes)) == 1  # every caller got the one stored checkpoint
    assert verify(app.source()).ok


def test_sqlite_writers_wait_for_the_lock_instead_of_failing(sqlite_store_url: str,
                                                             qledger_home: Path) -> None:
    """A writing transaction that reads first must not fail when another connection commits meanwhile.

    With SQLite's deferred BEGIN the second statement below failed at once with "database is
    locked" (a stale WAL snapshot is not retried); writers now take the lock at BEGIN and wait.
    """
    first, _ = make_ledger(sqlite_store_url, qledger_home)
    second = LedgerApp(sqlite_store_url, [], create_tables=False)
    with first.ledger.datastore.transaction(commit=True) as cursor:
        cursor.execute("CREATE TABLE scratch (writer TEXT)")

    def write_from_second() -> None:
        with second.ledger.datastore.transaction(commit=True) as other:
            other.execute("INSERT INTO scratch VALUES ('second')")

    with first.ledger.datastore.transaction(commit=True) as cursor:
        cursor.execute("SELECT count(*) FROM scratch")
        writer = threading.Thread(target=write_from_second)
        writer.start()
        writer.join(timeout=0.5)  # it must be waiting for this transaction's lock, not done
        assert writer.is_alive()
        cursor.execute("INSERT INTO scratch VALUES ('first')")
    writer.join(timeout=30)
    with first.ledger.read_transaction() as cursor:
        cursor.execute("SELECT writer FROM scratch ORDER BY rowid")
        assert [row[0] for row in cursor.fetchall()] == ["first", "second"]
