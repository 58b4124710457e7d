"""The work queue: which submitted runs still need an executor, and which chunks of a large
sweep still need computing, each claimed under a lease.

Not ledger tables (claims change), so they are ordinary mutable state beside the ledger.
On PostgreSQL several executor processes claim with ``FOR UPDATE SKIP LOCKED`` and leases
are timed by the database's clock; on SQLite the database's single writer makes the same
statement atomic.  A claim is a lease: an executor that dies stops renewing it, and
another executor takes the run over.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from typing import Any, cast
from uuid import UUID

import psycopg
from eventsourcing.persistence import PersistenceError
from psycopg.sql import SQL, Identifier

from qledger.ledger.app import LedgerApp

TABLE = "run_queue"
ITEMS_TABLE = "sweep_items"
ITEM_COLUMNS = ("run_id", "pub", "start", "stop", "seed", "backend", "noise_seed", "circuit_sha256")
PG_NOW = "extract(epoch from clock_timestamp())"


class StateTable:
    """A table of mutable executor state beside the ledger, on either store: its statements,
    keys and (for claimable rows) the lease clock."""

    name = ""

    def __init__(self, app: LedgerApp) -> None:
        self.is_pg = app.store.is_postgres
        self.writer = app.ledger
        self.datastore = cast(Any, app.recorder).datastore
        self.table = self.writer.table(self.name)

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

    def _clock(self) -> str:
        return "{now}" if self.is_pg else "%s"

    probe = ""  # columns whose presence says the table exists in its current shape

    def exists(self) -> bool:
        try:
            self._run(f"SELECT {self.probe} FROM {{q}} LIMIT 0", commit=False, fetch="all")
        except (PersistenceError, psycopg.Error, sqlite3.Error):  # missing, or an older shape
            return False
        return True

    def ensure(self) -> None:
        """``create`` unless the table is there: the service role may not CREATE or ALTER."""
        if not self.exists():
            self.create()

    def create(self, service_role: str | None = None) -> None:
        raise NotImplementedError

    def _grant(self, service_role: str | None, privileges: str) -> None:
        if self.is_pg and service_role:
            with self.datastore.transaction(commit=True) as cursor:
                cursor.execute(SQL("GRANT " + privileges + " ON {} TO {}").format(
                    SQL(self.table), Identifier(service_role)))


class RunQueue(StateTable):
    name = TABLE
    probe = "run_id, trace_parent"

    def create(self, service_role: str | None = None) -> None:
        if self.is_pg:
            self._run("CREATE TABLE IF NOT EXISTS {q} (run_id uuid PRIMARY KEY, enqueued_at double precision "
                      "NOT NULL, claimed_by text, lease_until double precision, attempts integer NOT NULL "
                      "DEFAULT 0, done boolean NOT NULL DEFAULT false, trace_parent text)")
            self._run("ALTER TABLE {q} ADD COLUMN IF NOT EXISTS trace_parent text")  # older queues
            self._grant(service_role, "SELECT, INSERT, UPDATE")
        else:
            self._run("CREATE TABLE IF NOT EXISTS {q} (run_id TEXT PRIMARY KEY, enqueued_at REAL NOT NULL, "
                      "claimed_by TEXT, lease_until REAL, attempts INTEGER NOT NULL DEFAULT 0, "
                      "done INTEGER NOT NULL DEFAULT 0, trace_parent TEXT)")
            columns = self._run("PRAGMA table_info({q})", commit=False, fetch="all")
            if "trace_parent" not in {c["name"] for c in columns}:  # a queue from before tracing
                self._run("ALTER TABLE {q} ADD COLUMN trace_parent TEXT")

    _ENQUEUE = ("INSERT INTO {q} (run_id, enqueued_at, trace_parent) VALUES (%s, {clock}, %s) "
                "ON CONFLICT DO NOTHING")

    def enqueue(self, run_id: UUID, trace_parent: str | None = None) -> None:
        """Queue a run, with the submitter's trace context so its execution joins that trace.
        A run already queued keeps its row (and its lease, if an executor holds it)."""
        self._run(self._ENQUEUE.replace("{clock}", self._clock()),
                  (self._key(run_id), *self._now(), trace_parent))

    def enqueue_with_next_append(self, run_id: UUID, trace_parent: str | None = None) -> None:
        """Queue the run in the transaction that appends the calling thread's next entries, so
        that an accepted run is always queued: a crash between the two cannot lose it."""
        sql = self._ENQUEUE.replace("{clock}", self._clock()).format(q=self.table, now=PG_NOW)
        self.writer.stage_statement(sql.replace("%s", self.writer.placeholder),
                                    (self._key(run_id), *self._now(), trace_parent))

    def queued(self) -> set[UUID]:
        """Every run that has a queue row, done or not."""
        rows = self._run("SELECT run_id FROM {q}", commit=False, fetch="all")
        return {UUID(str(r["run_id"])) for r in rows}

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

    def holder(self, run_id: UUID) -> str | None:
        """Which executor claimed the run last (its lease may have run out since)."""
        row = self._run("SELECT claimed_by FROM {q} WHERE run_id = %s", (self._key(run_id),), commit=False,
                        fetch="one")
        return None if row is None else row["claimed_by"]

    def pending(self) -> int:
        return int(self._run("SELECT COUNT(*) AS n FROM {q} WHERE NOT done", commit=False, fetch="one")["n"])

    def recent(self, limit: int) -> list[UUID]:
        """The most recently submitted runs, newest first."""
        rows = self._run("SELECT run_id FROM {q} ORDER BY enqueued_at DESC LIMIT %s", (limit,),
                         commit=False, fetch="all")
        return [UUID(str(r["run_id"])) for r in rows]


@dataclass(frozen=True)
class SweepItem:
    """One chunk of one PUB of a run's sweep: what a helper needs to compute it and check that
    it computes the very circuit the run's executor transpiled."""

    run_id: UUID
    pub: int
    start: int
    stop: int
    seed: int
    backend: str  # as the run's executor runs it (routing may have changed the definition's)
    noise_seed: int | None
    circuit_sha256: str  # the transpiled circuit's OpenQASM 3 digest


@dataclass(frozen=True)
class ItemState:
    done: bool
    claimed_by: str | None
    live_claim: bool  # claimed under a lease that has not run out
    result_sha256: str | None
    computed_by: str | None
    execute_ms: float | None


class SweepItems(StateTable):
    """The chunks of sweeps, so that every executor process on one store computes them.

    The run's own executor publishes them, takes the next one it has to record unless another
    executor holds it, and records results in order; idle executors take chunks from the end
    (``claim_any``).  A result is an artifact by digest, stored before its chunk is marked
    done, so a chunk is computed at most once unless a lease runs out."""

    name = ITEMS_TABLE
    probe = "run_id, circuit_sha256"
    HELPER_ATTEMPTS = 2  # after this many failures of helpers, only the run's executor tries

    def create(self, service_role: str | None = None) -> None:
        uuid_, real, flag = (("uuid", "double precision", "boolean NOT NULL DEFAULT false") if self.is_pg
                             else ("TEXT", "REAL", "INTEGER NOT NULL DEFAULT 0"))
        self._run(f"CREATE TABLE IF NOT EXISTS {{q}} (run_id {uuid_} NOT NULL, pub integer NOT NULL, "
                  "start integer NOT NULL, stop integer NOT NULL, seed bigint NOT NULL, "
                  "backend text NOT NULL, noise_seed bigint, circuit_sha256 text NOT NULL, "
                  f"published_at {real} NOT NULL, claimed_by text, lease_until {real}, "
                  f"helper_failures integer NOT NULL DEFAULT 0, done {flag}, result_sha256 text, "
                  f"computed_by text, execute_ms {real}, PRIMARY KEY (run_id, pub, start))")
        self._grant(service_role, "SELECT, INSERT, UPDATE, DELETE")

    def publish(self, items: list[SweepItem]) -> None:
        columns = ", ".join(ITEM_COLUMNS)
        marks = ", ".join(["%s"] * len(ITEM_COLUMNS))
        sql = (f"INSERT INTO {{q}} ({columns}, published_at) VALUES ({marks}, {self._clock()}) "
               "ON CONFLICT DO NOTHING")
        statement = sql.format(q=self.table, now=PG_NOW).replace("%s", self.writer.placeholder)
        with self.datastore.transaction(commit=True) as cursor:
            cursor.executemany(statement, [(self._key(i.run_id), i.pub, i.start, i.stop, i.seed, i.backend,
                                            i.noise_seed, i.circuit_sha256, *self._now()) for i in items])

    def state(self, run_id: UUID, pub: int, start: int) -> ItemState | None:
        row = self._run(f"SELECT done, claimed_by, lease_until >= {self._clock()} AS live, result_sha256, "
                        "computed_by, execute_ms FROM {q} WHERE run_id = %s AND pub = %s AND start = %s",
                        (*self._now(), self._key(run_id), pub, start), commit=False, fetch="one")
        if row is None:
            return None
        return ItemState(bool(row["done"]), row["claimed_by"], bool(row["live"]), row["result_sha256"],
                         row["computed_by"], None if row["execute_ms"] is None else float(row["execute_ms"]))

    def claim(self, run_id: UUID, pub: int, start: int, worker: str, lease_seconds: float) -> bool:
        """Take this chunk unless it is done or another executor's lease on it is still live."""
        clock = self._clock()
        row = self._run(f"UPDATE {{q}} SET claimed_by = %s, lease_until = {clock} + %s WHERE run_id = %s "
                        f"AND pub = %s AND start = %s AND NOT done AND (claimed_by IS NULL "
                        f"OR claimed_by = %s OR lease_until < {clock}) RETURNING pub",
                        (worker, *self._now(), lease_seconds, self._key(run_id), pub, start, worker,
                         *self._now()), fetch="one")
        return row is not None

    def claim_any(self, worker: str, lease_seconds: float) -> SweepItem | None:
        """An idle executor's pick: the last free chunk of the oldest sweep."""
        # Idle executors ask often: a read first, so that asking writes nothing (on SQLite a
        # write would contend with every other process on the file) unless there is work.
        if self._run("SELECT 1 AS work FROM {q} WHERE NOT done LIMIT 1", commit=False, fetch="one") is None:
            return None
        clock, lock = self._clock(), " FOR UPDATE SKIP LOCKED" if self.is_pg else ""
        row = self._run(
            f"UPDATE {{q}} SET claimed_by = %s, lease_until = {clock} + %s WHERE (run_id, pub, start) = "
            f"(SELECT run_id, pub, start FROM {{q}} WHERE NOT done AND helper_failures < %s AND "
            f"(claimed_by IS NULL OR lease_until < {clock}) ORDER BY published_at, run_id, pub DESC, "
            f"start DESC LIMIT 1{lock}) RETURNING {', '.join(ITEM_COLUMNS)}",
            (worker, *self._now(), lease_seconds, self.HELPER_ATTEMPTS, *self._now()), fetch="one")
        if row is None:
            return None
        noise_seed = None if row["noise_seed"] is None else int(row["noise_seed"])
        return SweepItem(UUID(str(row["run_id"])), int(row["pub"]), int(row["start"]), int(row["stop"]),
                         int(row["seed"]), str(row["backend"]), noise_seed, str(row["circuit_sha256"]))

    def complete(self, run_id: UUID, pub: int, start: int, worker: str, result_sha256: str,
                 execute_ms: float) -> None:
        done = "true" if self.is_pg else "1"
        self._run(f"UPDATE {{q}} SET done = {done}, result_sha256 = %s, computed_by = %s, execute_ms = %s, "
                  "lease_until = NULL WHERE run_id = %s AND pub = %s AND start = %s AND NOT done",
                  (result_sha256, worker, execute_ms, self._key(run_id), pub, start))

    def release(self, run_id: UUID, pub: int, start: int, worker: str) -> None:
        """A helper could not compute the chunk: free it, and count the failure."""
        self._run("UPDATE {q} SET claimed_by = NULL, lease_until = NULL, "
                  "helper_failures = helper_failures + 1 WHERE run_id = %s AND pub = %s AND start = %s "
                  "AND claimed_by = %s AND NOT done",
                  (self._key(run_id), pub, start, worker))

    def forget(self, run_id: UUID) -> None:
        """The run is over: its chunks are recorded in the ledger and need no coordination."""
        self._run("DELETE FROM {q} WHERE run_id = %s", (self._key(run_id),))

    def count(self, run_id: UUID) -> int:
        row = self._run("SELECT COUNT(*) AS n FROM {q} WHERE run_id = %s", (self._key(run_id),),
                        commit=False, fetch="one")
        return int(row["n"])
