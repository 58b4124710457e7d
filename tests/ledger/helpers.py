"""A small client aggregate and a raw-SQL tamperer shared by the ledger tests."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import psycopg
from eventsourcing.domain import Aggregate, event

from qledger.ledger import merkle
from qledger.ledger.admin import add_key, init_store, open_admin_app
from qledger.ledger.app import LedgerApp
from qledger.ledger.chain import GENESIS_CHAIN_HASH, chain_hash
from qledger.ledger.keys import KeyStore, SigningKey


class Note(Aggregate):
    """A client's stream of notes: stands in for any workflow aggregate."""

    @event("Opened")
    def __init__(self, *, principal: str, title: str) -> None:
        self.title = title
        self.lines: list[str] = []

    @event("Written")
    def write(self, *, principal: str, text: str) -> None:
        self.lines.append(text)


def make_ledger(store_url: str, home: Path) -> tuple[LedgerApp, SigningKey]:
    """An initialised ledger (genesis, checkpoint key) plus a registered client ``alice``."""
    keys = KeyStore(home)
    app = open_admin_app(store_url, keys, create_tables=False)
    init_store(app, keys)
    alice = add_key(app, keys, "alice", "client")
    app.add_signer(alice)
    return app, alice


def write_notes(app: LedgerApp, principal: str, count: int, per_save: int = 1) -> None:
    pending = []
    for i in range(count):
        note = Note(principal=principal, title=f"note {i}")
        note.write(principal=principal, text=f"line {i}")
        pending.append(note)
        if len(pending) == per_save:
            app.save(*pending)
            pending = []
    if pending:
        app.save(*pending)


class RawStore:
    """Superuser access that bypasses the append-only triggers, as an attacker would."""

    def __init__(self, store_url: str) -> None:
        self.url = store_url
        parsed = urlparse(store_url)
        self.is_pg = parsed.scheme.startswith("postgres")
        if self.is_pg:
            self.schema = parse_qs(parsed.query)["schema"][0]
            self.events, self.nid = f'"{self.schema}".qledger_events', "notification_id"
            self.prefix = f'"{self.schema}".'
        else:
            self.path = store_url[len("sqlite:///"):]
            self.events, self.nid, self.prefix = "stored_events", "rowid", ""

    @contextmanager
    def connection(self) -> Iterator[Any]:
        if self.is_pg:
            base = self.url.split("?")[0]
            with psycopg.connect(base, autocommit=False) as conn:
                for table in ("qledger_events", "ledger_entries", "ledger_keys", "ledger_checkpoints"):
                    conn.execute(f'ALTER TABLE "{self.schema}".{table} DISABLE TRIGGER USER')
                yield conn
                for table in ("qledger_events", "ledger_entries", "ledger_keys", "ledger_checkpoints"):
                    conn.execute(f'ALTER TABLE "{self.schema}".{table} ENABLE TRIGGER USER')
                conn.commit()
        else:
            conn = sqlite3.connect(self.path)
            names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='trigger'")]
            for name in names:
                conn.execute(f"DROP TRIGGER {name}")
            try:
                yield conn
                conn.commit()
            finally:
                conn.close()

    def sql(self, template: str) -> str:
        text = template.format(events=self.events, nid=self.nid,
                               entries=f"{self.prefix}ledger_entries",
                               keys=f"{self.prefix}ledger_keys",
                               checkpoints=f"{self.prefix}ledger_checkpoints")
        return text if self.is_pg else text.replace("%s", "?")

    def execute(self, template: str, params: tuple[Any, ...] = ()) -> list[Any]:
        with self.connection() as conn:
            cursor = conn.execute(self.sql(template), params)
            return list(cursor.fetchall()) if cursor.description else []

    def state_at(self, position: int) -> bytes:
        rows = self.execute("SELECT s.state FROM {events} s JOIN {entries} e "
                            "ON s.{nid} = e.notification_id WHERE e.position = %s", (position,))
        return bytes(rows[0][0])

    def set_state(self, position: int, state: bytes) -> None:
        self.execute("UPDATE {events} SET state = %s WHERE {nid} = "
                     "(SELECT notification_id FROM {entries} WHERE position = %s)", (state, position))

    def rechain(self) -> None:
        """Recompute every leaf, chain and Merkle hash from the stored states: a thorough forger."""
        rows = self.execute("SELECT e.position, s.state FROM {entries} e JOIN {events} s "
                            "ON s.{nid} = e.notification_id ORDER BY e.position")
        previous = GENESIS_CHAIN_HASH
        frontier = merkle.Frontier()
        with self.connection() as conn:
            for position, state in rows:
                leaf = merkle.leaf_hash(bytes(state))
                previous = chain_hash(previous, leaf)
                nodes = b"".join(frontier.append(leaf))
                conn.execute(self.sql("UPDATE {entries} SET leaf_hash = %s, chain_hash = %s, "
                                      "subtree_hashes = %s WHERE position = %s"),
                             (leaf, previous, nodes, position))
