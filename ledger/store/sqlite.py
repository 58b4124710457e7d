"""The SQLite ledger recorder: the library's SQLite recorder plus the ledger's tables."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from eventsourcing.persistence import StoredEvent
from eventsourcing.sqlite import SQLiteApplicationRecorder, SQLiteCursor, SQLiteDatastore

from ledger.store.chain_writer import ChainWriter
from ledger.store.ledger_tables import CHECKPOINTS, ENTRIES, KEYS, TABLE_DDL


class LedgerSQLiteRecorder(SQLiteApplicationRecorder, ChainWriter):
    notification_column = "rowid"

    def __init__(self, datastore: SQLiteDatastore, events_table_name: str = "stored_events"):
        super().__init__(datastore, events_table_name)
        self.init_chain_writer()

    placeholder = "?"
    column_types: ClassVar[dict[str, str]] = {"int": "INTEGER", "real": "REAL", "blob": "BLOB"}

    def table(self, name: str) -> str:
        return name

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
