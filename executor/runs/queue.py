"""The work queue: which submitted runs still need an executor, claimed under a lease.

Not a ledger table (claims change), so it is ordinary mutable state beside the ledger.
On PostgreSQL several executor processes claim with ``FOR UPDATE SKIP LOCKED`` and leases
are timed by the database's clock; on SQLite the database's single writer makes the same
statement atomic.  A claim is a lease: an executor that dies stops renewing it, and
another executor takes the run over.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any, cast
from uuid import UUID

import psycopg
from eventsourcing.persistence import PersistenceError
from psycopg.sql import SQL, Identifier

from qledger.ledger.app import LedgerApp

TABLE = "run_queue"
PG_NOW = "extract(epoch from clock_timestamp())"


class RunQueue:
    def __init__(self, app: LedgerApp) -> None:
        self.is_pg = app.store.is_postgres
        self.writer = app.ledger
        self.datastore = cast(Any, app.recorder).datastore
        self.table = self.writer.table(TABLE)

    def _run(self, statement: str, params: tuple[Any, ...] = (), *, commit: bool = True,
             fetch: str = "") -> Any:
        """Execute ``statement`` ({q} is the table, {now} PostgreSQL's clock); ``fetch`` is
        "one", "all" or "" for statements that return nothing."""
        sql = statement.format(q=self.table, now=PG_NOW).replace("%s", self.writer.placeholder)
        with self.datastore.transaction(commit=commit) as cursor:
            cursor.execute(sql, params)
            if fetch == "one":
                return cursor.fetchone()
            return cursor.fetchall() if fetch == "all" else None

    def _key(self, run_id: UUID) -> Any:
        return run_id if self.is_pg else str(run_id)

    def _now(self) -> tuple[()] | tuple[float]:
        """SQLite takes the time as a parameter; PostgreSQL reads its own clock ({now})."""
        return () if self.is_pg else (time.time(),)

    def exists(self) -> bool:
        try:
            self._run("SELECT run_id, trace_parent FROM {q} LIMIT 0", commit=False, fetch="all")
        except (PersistenceError, psycopg.Error, sqlite3.Error):  # missing, or an older shape
            return False
        return True

    def ensure(self) -> None:
        """``create`` unless the table is there: the service role may not CREATE or ALTER."""
        if not self.exists():
            self.create()

    def create(self, service_role: str | None = None) -> None:
        if self.is_pg:
            self._run("CREATE TABLE IF NOT EXISTS {q} (run_id uuid PRIMARY KEY, enqueued_at double precision "
                      "NOT NULL, claimed_by text, lease_until double precision, attempts integer NOT NULL "
                      "DEFAULT 0, done boolean NOT NULL DEFAULT false, trace_parent text)")
            self._run("ALTER TABLE {q} ADD COLUMN IF NOT EXISTS trace_parent text")  # older queues
            if service_role:
                with self.datastore.transaction(commit=True) as cursor:
                    cursor.execute(SQL("GRANT SELECT, INSERT, UPDATE ON {} TO {}").format(
                        SQL(self.table), Identifier(service_role)))
        else:
            self._run("CREATE TABLE IF NOT EXISTS {q} (run_id TEXT PRIMARY KEY, enqueued_at REAL NOT NULL, "
                      "claimed_by TEXT, lease_until REAL, attempts INTEGER NOT NULL DEFAULT 0, "
                      "done INTEGER NOT NULL DEFAULT 0, trace_parent TEXT)")
            columns = self._run("PRAGMA table_info({q})", commit=False, fetch="all")
            if "trace_parent" not in {c["name"] for c in columns}:  # a queue from before tracing
                self._run("ALTER TABLE {q} ADD COLUMN trace_parent TEXT")

    def _clock(self) -> str:
        return "{now}" if self.is_pg else "%s"

    def enqueue(self, run_id: UUID, trace_parent: str | None = None) -> None:
        """Queue a run, with the submitter's trace context so its execution joins that trace."""
        self._run(f"INSERT INTO {{q}} (run_id, enqueued_at, trace_parent) VALUES (%s, {self._clock()}, %s) "
                  "ON CONFLICT DO NOTHING", (self._key(run_id), *self._now(), trace_parent))

    def claim(self, worker: str, lease_seconds: float) -> tuple[UUID, int, str | None] | None:
        """Take the oldest unclaimed (or lease-expired) run: its id, attempt count, trace context."""
        now = self._now()
        lock = " FOR UPDATE SKIP LOCKED" if self.is_pg else ""
        clock = self._clock()
        row = self._run(
            f"UPDATE {{q}} SET claimed_by = %s, attempts = attempts + 1, lease_until = {clock} + %s "
            f"WHERE run_id = (SELECT run_id FROM {{q}} WHERE NOT done AND (lease_until IS NULL "
            f"OR lease_until < {clock}) ORDER BY enqueued_at{lock} LIMIT 1) "
            "RETURNING run_id, attempts, trace_parent",
            (worker, *now, lease_seconds, *now), fetch="one")
        if row is None:
            return None
        return UUID(str(row["run_id"])), int(row["attempts"]), row["trace_parent"]

    def renew(self, run_id: UUID, worker: str, lease_seconds: float) -> bool:
        """Extend our lease; False if another executor has taken the run over."""
        row = self._run(f"UPDATE {{q}} SET lease_until = {self._clock()} + %s WHERE run_id = %s "
                        "AND claimed_by = %s RETURNING run_id",
                        (*self._now(), lease_seconds, self._key(run_id), worker), fetch="one")
        return row is not None

    def finish(self, run_id: UUID, worker: str) -> None:
        done = "true" if self.is_pg else "1"
        self._run(f"UPDATE {{q}} SET done = {done} WHERE run_id = %s AND claimed_by = %s",
                  (self._key(run_id), worker))

    def pending(self) -> int:
        return int(self._run("SELECT COUNT(*) AS n FROM {q} WHERE NOT done", commit=False, fetch="one")["n"])

    def recent(self, limit: int) -> list[UUID]:
        """The most recently submitted runs, newest first."""
        rows = self._run("SELECT run_id FROM {q} ORDER BY enqueued_at DESC LIMIT %s", (limit,),
                         commit=False, fetch="all")
        return [UUID(str(r["run_id"])) for r in rows]
