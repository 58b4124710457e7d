"""The work queue: which submitted runs still need an executor, claimed under a lease.

Not a ledger table (claims change), so it is ordinary mutable state beside the ledger.
On PostgreSQL several executor processes claim with ``FOR UPDATE SKIP LOCKED``; on SQLite
the database's single writer makes the same statement atomic.  A claim is a lease: an
executor that dies stops renewing it, and another executor takes the run over.
"""

from __future__ import annotations

import time
from typing import Any, cast
from uuid import UUID

from psycopg.sql import SQL, Identifier

from ledger.app import LedgerApp

TABLE = "run_queue"


class RunQueue:
    def __init__(self, app: LedgerApp) -> None:
        self.app = app
        self.is_pg = app.store.is_postgres
        recorder = cast(Any, app.recorder)
        self.datastore = recorder.datastore
        if self.is_pg:
            self.table = SQL("{}.{}").format(Identifier(self.datastore.schema), Identifier(TABLE)).as_string()
        else:
            self.table = TABLE

    def _sql(self, pg: str, sqlite: str) -> str:
        return (pg if self.is_pg else sqlite).format(q=self.table)

    def create(self, service_role: str | None = None) -> None:
        with self.datastore.transaction(commit=True) as cursor:
            cursor.execute(self._sql(
                "CREATE TABLE IF NOT EXISTS {q} (run_id uuid PRIMARY KEY, enqueued_at double precision "
                "NOT NULL, claimed_by text, lease_until double precision, attempts integer NOT NULL "
                "DEFAULT 0, done boolean NOT NULL DEFAULT false)",
                "CREATE TABLE IF NOT EXISTS {q} (run_id TEXT PRIMARY KEY, enqueued_at REAL NOT NULL, "
                "claimed_by TEXT, lease_until REAL, attempts INTEGER NOT NULL DEFAULT 0, "
                "done INTEGER NOT NULL DEFAULT 0)"))
            if self.is_pg and service_role:
                cursor.execute(SQL("GRANT SELECT, INSERT, UPDATE ON {} TO {}").format(
                    SQL(self.table), Identifier(service_role)))

    def enqueue(self, run_id: UUID) -> None:
        key = run_id if self.is_pg else str(run_id)
        with self.datastore.transaction(commit=True) as cursor:
            if self.is_pg:
                cursor.execute(self._sql("INSERT INTO {q} (run_id, enqueued_at) VALUES "
                                         "(%s, extract(epoch from clock_timestamp())) "
                                         "ON CONFLICT DO NOTHING", ""), (key,))
            else:
                cursor.execute(self._sql("", "INSERT INTO {q} (run_id, enqueued_at) VALUES (?, ?) "
                                             "ON CONFLICT DO NOTHING"), (key, time.time()))

    def claim(self, worker: str, lease_seconds: float) -> tuple[UUID, int] | None:
        """Take the oldest unclaimed (or lease-expired) run; return it and its attempt count."""
        with self.datastore.transaction(commit=True) as cursor:
            if self.is_pg:
                cursor.execute(self._sql(
                    "UPDATE {q} SET claimed_by = %s, attempts = attempts + 1, "
                    "lease_until = extract(epoch from clock_timestamp()) + %s "
                    "WHERE run_id = (SELECT run_id FROM {q} WHERE NOT done AND (lease_until IS NULL "
                    "OR lease_until < extract(epoch from clock_timestamp())) ORDER BY enqueued_at "
                    "FOR UPDATE SKIP LOCKED LIMIT 1) RETURNING run_id, attempts", ""),
                    (worker, lease_seconds))
            else:
                now = time.time()
                cursor.execute(self._sql("", (
                    "UPDATE {q} SET claimed_by = ?, attempts = attempts + 1, lease_until = ? "
                    "WHERE run_id = (SELECT run_id FROM {q} WHERE NOT done AND (lease_until IS NULL "
                    "OR lease_until < ?) ORDER BY enqueued_at LIMIT 1) RETURNING run_id, attempts")),
                    (worker, now + lease_seconds, now))
            row = cursor.fetchone()
        if row is None:
            return None
        return UUID(str(row["run_id"])), int(row["attempts"])

    def renew(self, run_id: UUID, worker: str, lease_seconds: float) -> bool:
        """Extend our lease; False if another executor has taken the run over."""
        key = run_id if self.is_pg else str(run_id)
        with self.datastore.transaction(commit=True) as cursor:
            if self.is_pg:
                cursor.execute(self._sql("UPDATE {q} SET lease_until = extract(epoch from "
                                         "clock_timestamp()) + %s WHERE run_id = %s AND claimed_by = %s "
                                         "RETURNING run_id", ""), (lease_seconds, key, worker))
            else:
                cursor.execute(self._sql("", "UPDATE {q} SET lease_until = ? WHERE run_id = ? AND "
                                             "claimed_by = ? RETURNING run_id"),
                               (time.time() + lease_seconds, key, worker))
            return cursor.fetchone() is not None

    def finish(self, run_id: UUID, worker: str) -> None:
        key = run_id if self.is_pg else str(run_id)
        with self.datastore.transaction(commit=True) as cursor:
            cursor.execute(self._sql("UPDATE {q} SET done = true WHERE run_id = %s AND claimed_by = %s",
                                     "UPDATE {q} SET done = 1 WHERE run_id = ? AND claimed_by = ?"),
                           (key, worker))

    def pending(self) -> int:
        with self.datastore.transaction(commit=False) as cursor:
            cursor.execute(self._sql("SELECT COUNT(*) AS n FROM {q} WHERE NOT done",
                                     "SELECT COUNT(*) AS n FROM {q} WHERE NOT done"))
            return int(cursor.fetchone()["n"])

    def recent(self, limit: int) -> list[UUID]:
        """The most recently submitted runs, newest first."""
        with self.datastore.transaction(commit=False) as cursor:
            cursor.execute(self._sql("SELECT run_id FROM {q} ORDER BY enqueued_at DESC LIMIT %s",
                                     "SELECT run_id FROM {q} ORDER BY enqueued_at DESC LIMIT ?"), (limit,))
            return [UUID(str(r["run_id"])) for r in cursor.fetchall()]
