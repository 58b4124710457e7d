"""The SQLite ledger recorder: the library's SQLite recorder plus the ledger's tables."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar
from uuid import UUID

from eventsourcing.persistence import StoredEvent
from eventsourcing.sqlite import (
    SQLiteApplicationRecorder,
    SQLiteConnection,
    SQLiteConnectionPool,
    SQLiteCursor,
    SQLiteDatastore,
    SQLiteFactory,
    SQLiteTransaction,
)

from qledger.ledger.source import EntryRow
from qledger.ledger.store.chain_writer import ChainWriter
from qledger.ledger.store.ledger_tables import CHECKPOINTS, ENTRIES, KEYS, TABLE_DDL
from qledger.ledger.store.range_reader import EntryRangeReader


class _WriteFirstTransaction(SQLiteTransaction):
    """A writing transaction takes the write lock at BEGIN, not at its first write.

    In WAL mode a deferred transaction that has read and then writes, after another process
    committed, fails at once with "database is locked" (its snapshot is stale; SQLite does not
    wait on its busy timeout then). BEGIN IMMEDIATE waits for the lock up to that timeout instead.
    """

    def __enter__(self) -> SQLiteCursor:
        if not self.commit:
            return super().__enter__()
        cursor = self.connection.cursor()
        cursor.execute("BEGIN IMMEDIATE")
        return cursor


class _WriteFirstConnection(SQLiteConnection):
    @contextmanager
    def transaction(self, *, commit: bool) -> Iterator[SQLiteCursor]:
        with _WriteFirstTransaction(self, commit=commit) as cursor, cursor:
            yield cursor


class _WriteFirstPool(SQLiteConnectionPool):
    def _create_connection(self) -> SQLiteConnection:
        made = super()._create_connection()
        return _WriteFirstConnection(made._sqlite_conn, max_age=self.max_age)


class LedgerSQLiteFactory(SQLiteFactory):
    """The library's SQLite factory whose datastore serialises writers on the lock, not by failing."""

    def __init__(self, env: Any):
        super().__init__(env)
        pool = self.datastore.pool
        self.datastore.pool = _WriteFirstPool(
            db_name=pool.db_name, lock_timeout=pool.lock_timeout, pool_size=pool.pool_size,
            max_overflow=pool.max_overflow, pool_timeout=pool.pool_timeout, max_age=pool.max_age,
            pre_ping=pool.pre_ping)
        pool.close()


class LedgerSQLiteRecorder(SQLiteApplicationRecorder, ChainWriter):
    notification_column = "rowid"

    def __init__(self, datastore: SQLiteDatastore, events_table_name: str = "stored_events"):
        super().__init__(datastore, events_table_name)
        self.init_chain_writer()

    placeholder = "?"
    column_types: ClassVar[dict[str, str]] = {"int": "INTEGER", "real": "REAL", "blob": "BLOB"}

    def table(self, name: str) -> str:
        return name

    def fetch_entry_rows(self, cursor: Any, sql: str, params: Sequence[Any]) -> list[EntryRow]:
        cursor.execute(sql, params)
        return [_entry_row(row) for row in cursor.fetchall()]

    def entry_reader(self, sql: str) -> EntryRangeReader | None:
        pool = self.datastore.pool
        if pool.is_sqlite_memory_mode:  # another process cannot open this database
            return None
        return EntryRangeReader(sqlite3.connect, (("database", pool.db_name),), read_entry_rows, sql)

    def plan_windows(self, cursor: Any) -> None:
        pass  # SQLite reads a range of an INTEGER PRIMARY KEY by that key without being told

    def construct_create_table_statements(self) -> list[str]:
        statements = super().construct_create_table_statements()
        statements += [self.format_sql(ddl) for ddl in TABLE_DDL]
        for table in (self.events_table_name, ENTRIES, KEYS, CHECKPOINTS):
            for operation in ("UPDATE", "DELETE"):
                statements.append(
                    f"CREATE TRIGGER IF NOT EXISTS {table}_no_{operation.lower()} "
                    f"BEFORE {operation} ON {table} BEGIN "
                    f"SELECT RAISE(ABORT, 'qledger: {table} is append-only, {operation} refused'); "
                    "END"
                )
        return statements

    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        return self.run_insert(  # type: ignore[no-any-return]
            stored_events, lambda: super(LedgerSQLiteRecorder, self).insert_events(
                stored_events, **kwargs)
        )

    def _insert_events(
        self, c: SQLiteCursor, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        notification_ids = super()._insert_events(c, stored_events, **kwargs)
        assert notification_ids is not None
        self.chain(c, notification_ids)
        return notification_ids


def read_entry_rows(connection: sqlite3.Connection, sql: str, params: Sequence[Any]) -> list[EntryRow]:
    return [_entry_row(row) for row in connection.execute(sql, params).fetchall()]


def _entry_row(row: Any) -> EntryRow:
    return EntryRow(row[0], row[1], row[2], row[3], row[4], row[5], _dashed_uuid(row[6]), row[7], row[8])


def _dashed_uuid(value: str | None) -> str | None:
    """The library keeps stream ids as bare hex here, as uuid in PostgreSQL: compare one spelling."""
    if value is None:
        return None
    try:
        return str(UUID(value))
    except ValueError:
        return value
