"""Read models that follow the ledger, and the engine that feeds them.

A projection is a set of tables derived only from ledger entries.  The engine hands it the
entries after the last position it processed, a page at a time, and moves the projection's
tracking row forward *in the same transaction* as the page's writes: after a crash the
projection restarts exactly where its state ends, so no entry is skipped or counted twice.
Two followers of one projection (two executor replicas) cannot both apply a page: the
tracking update only succeeds from the position the page started at.

``rebuild`` empties a projection's tables and replays the log from position 1, paging, so
its memory does not grow with the ledger.
"""

from __future__ import annotations

import base64
import json
import logging
import sqlite3
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import psycopg
from eventsourcing.persistence import InterfaceError, OperationalError, PersistenceError
from psycopg import DatabaseError

from qledger.ledger.content import EntryContent
from qledger.ledger.errors import QledgerError, StoreNotInitialisedError, UnknownProjectionError
from qledger.ledger.source import EntryRow, LedgerSource
from qledger.ledger.store.chain_writer import ChainWriter

TRACKING_TABLE = "qledger_projection_tracking"
SKIPPED_TABLE = "qledger_projection_skipped"
TRACKING_DDL = ("CREATE TABLE IF NOT EXISTS {tracking} (name TEXT PRIMARY KEY, "
                "position {int} NOT NULL)")
SKIPPED_DDL = ("CREATE TABLE IF NOT EXISTS {skipped} (name TEXT NOT NULL, position {int} NOT NULL, "
               "error TEXT NOT NULL, PRIMARY KEY (name, position))")
# The shape each projection's tables were made in (Projection.version).  A store made before
# versions were recorded has no row: its tables are version 1.
VERSIONS_TABLE = "qledger_projection_versions"
VERSIONS_DDL = "CREATE TABLE IF NOT EXISTS {versions} (name TEXT PRIMARY KEY, version {int} NOT NULL)"
# A lost connection or a busy store: the page is tried again later, whole.  Anything else that
# a page raises is about an entry, and only that entry is skipped.
_OUTAGES: tuple[type[BaseException], ...] = (OperationalError, InterfaceError, sqlite3.OperationalError,
                                             psycopg.OperationalError, psycopg.InterfaceError)
log = logging.getLogger("qledger.projections")


class TrackingMovedError(Exception):
    """Another follower applied this page first; the caller re-reads and goes on."""


@dataclass(frozen=True)
class ProjectedEntry:
    position: int
    leaf_hash: str
    content: EntryContent


class ProjectionDB:
    """A cursor in a projection's transaction, with its table names and the store's dialect."""

    def __init__(self, cursor: Any, writer: ChainWriter, tables: Iterable[str]) -> None:
        self.cursor, self.writer = cursor, writer
        self.tables = {name: name for name in tables}
        self.tables["tracking"] = TRACKING_TABLE
        self.tables["skipped"] = SKIPPED_TABLE
        self.tables["versions"] = VERSIONS_TABLE
        self.names = {key: writer.table(name) for key, name in self.tables.items()}
        self._cache: dict[str, str] = {}

    def sql(self, template: str) -> str:
        text = self._cache.get(template)
        if text is None:
            text = self._cache[template] = self.writer.format_sql(template, **self.tables)
        return text

    def execute(self, template: str, params: Sequence[Any] = ()) -> Any:
        self.cursor.execute(self.sql(template), tuple(params))
        return self.cursor

    def insert(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]],
               on_conflict: str) -> None:
        """INSERT ``rows``; ``on_conflict`` follows ``ON CONFLICT``.  With DO UPDATE a key may
        appear only once in ``rows`` (PostgreSQL will not update a row twice in one statement).
        """
        if not rows:
            return
        names = ", ".join(columns)
        on_conflict = on_conflict.format(**self.names)  # it may name this projection's tables
        if self.writer.placeholder == "?":
            marks = ", ".join("?" * len(columns))
            self.cursor.executemany(f"INSERT INTO {self.names[table]} ({names}) VALUES ({marks}) "
                                    f"ON CONFLICT {on_conflict}", rows)
            return
        # PostgreSQL: COPY into a session temp table shaped like the target, then one
        # INSERT ... SELECT.  A round trip per row (even pipelined) or a statement with
        # thousands of parameters costs several times more.
        incoming = f"qledger_incoming_{table}"
        self.cursor.execute(f"CREATE TEMP TABLE IF NOT EXISTS {incoming} (LIKE {self.names[table]}) "
                            "ON COMMIT DELETE ROWS")
        with self.cursor.copy(f"COPY {incoming} ({names}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        self.cursor.execute(f"INSERT INTO {self.names[table]} ({names}) SELECT {names} FROM {incoming} "
                            f"ON CONFLICT {on_conflict}")
        self.cursor.execute(f"DELETE FROM {incoming}")

    def rows(self, template: str, params: Sequence[Any] = ()) -> list[Any]:
        return list(self.execute(template, params).fetchall())

    def rows_in(self, table: str, column: str, values: Sequence[Any]) -> list[Any]:
        """Every row of ``table`` whose ``column`` is one of ``values``."""
        if not values:
            return []
        return self.rows(f"SELECT * FROM {{{table}}} WHERE {column} IN ({self.in_list(values)})", values)

    def in_list(self, values: Sequence[Any]) -> str:
        """Placeholders for an IN (...) list of ``values``."""
        return self.writer.in_list(len(values))


class Projection(ABC):
    """One read model: its tables (DDL templates) and how a page of entries changes them.

    DDL and queries are templates: ``{name}`` is a table of this projection, ``{p}`` the
    parameter marker, ``{int}`` and ``{real}`` the dialect's column types.
    """

    name: ClassVar[str]
    tables: ClassVar[tuple[str, ...]]
    ddl: ClassVar[tuple[str, ...]]
    # The shape of the tables: raised whenever ``ddl`` changes them, so that a store whose
    # tables have an older shape gets them made anew and replayed, never folded into as they are.
    version: ClassVar[int] = 1

    @abstractmethod
    def apply(self, db: ProjectionDB, entries: Sequence[ProjectedEntry]) -> None:
        """Fold ``entries`` (consecutive, in position order) into the tables."""

    def dump(self, db: ProjectionDB) -> dict[str, list[tuple[Any, ...]]]:
        """Every row of every table, sorted: what a rebuild must reproduce exactly."""
        return {table: sorted(tuple(r.values()) if isinstance(r, dict) else tuple(r)
                              for r in db.rows(f"SELECT * FROM {{{table}}}"))
                for table in self.tables}


ProgressCallback = Callable[[int, int], None]  # (entries done in this call, of how many)


class ProjectionRunner:
    """Feeds projections from a ledger source and keeps their tracking rows."""

    def __init__(self, writer: ChainWriter, source: LedgerSource, projections: Sequence[Projection],
                 page_size: int = 1000) -> None:
        self.writer, self.source, self.page_size = writer, source, page_size
        self.projections = {p.name: p for p in projections}

    def select(self, names: Iterable[str] | None) -> list[Projection]:
        wanted = list(self.projections) if names is None else list(names)
        unknown = [n for n in wanted if n not in self.projections]
        if unknown:
            raise UnknownProjectionError(f"no projection named {', '.join(unknown)}; "
                                         f"there are {', '.join(sorted(self.projections))}")
        return [self.projections[n] for n in wanted]

    def _db(self, cursor: Any, projection: Projection | None = None) -> ProjectionDB:
        return ProjectionDB(cursor, self.writer, projection.tables if projection else ())

    def create_tables(self) -> None:
        """Tables and tracking rows, if missing; a projection's tables of an older shape than
        its ``version`` are made anew, to be replayed from the first entry.  On PostgreSQL,
        ``qledger init`` runs this (it needs the owner's CREATE and DROP)."""
        stale = self.stale()
        with self.writer.write_transaction() as cursor:
            for statement in (TRACKING_DDL, SKIPPED_DDL, VERSIONS_DDL):
                self._db(cursor).execute(statement)
            for projection in self.projections.values():
                db = self._db(cursor, projection)
                if projection.name in stale:
                    log.warning("projection %s: its tables have the shape of version %d; making them "
                                "anew (version %d) and replaying the ledger into them", projection.name,
                                stale[projection.name], projection.version)
                    for table in projection.tables:
                        db.execute(f"DROP TABLE IF EXISTS {{{table}}}")
                    db.execute("UPDATE {tracking} SET position = 0 WHERE name = {p}", (projection.name,))
                    db.execute("DELETE FROM {skipped} WHERE name = {p}", (projection.name,))
                for statement in projection.ddl:
                    db.execute(statement)
                db.execute("INSERT INTO {tracking} (name, position) VALUES ({p}, 0) "
                           "ON CONFLICT (name) DO NOTHING", (projection.name,))
                db.execute("INSERT INTO {versions} (name, version) VALUES ({p}, {p}) ON CONFLICT (name) "
                           "DO UPDATE SET version = excluded.version", (projection.name, projection.version))

    def stale(self) -> dict[str, int]:
        """Projections whose tables exist in an older shape than their ``version``: the
        version they have."""
        try:
            tracked = set(self.positions())
        except (PersistenceError, DatabaseError, sqlite3.Error):
            return {}  # nothing made yet
        try:
            with self.writer.read_transaction() as cursor:
                recorded = {r["name"]: int(r["version"])
                            for r in self._db(cursor).rows("SELECT name, version FROM {versions}")}
        except (PersistenceError, DatabaseError, sqlite3.Error):
            recorded = {}  # made before versions were recorded
        return {p.name: recorded.get(p.name, 1) for p in self.projections.values()
                if p.name in tracked and recorded.get(p.name, 1) != p.version}

    def ensure_tables(self) -> None:
        """``create_tables`` unless they are all there in their current shape; a store whose
        role may not CREATE (PostgreSQL's service role) is told to run ``qledger init``."""
        try:
            if set(self.positions()) == set(self.projections) and not self.stale():
                self.skipped()
                return
        except (PersistenceError, DatabaseError, sqlite3.Error):
            pass  # no tracking table yet
        try:
            self.create_tables()
        except (PersistenceError, DatabaseError, sqlite3.Error) as exc:
            stale = ", ".join(f"{name} (version {v}, now {self.projections[name].version})"
                              for name, v in self.stale().items())
            raise StoreNotInitialisedError(
                f"the projections' tables {'have an older shape: ' + stale if stale else 'are missing'}; "
                f"run `qledger init` as the store's owner ({exc})") from None

    def table_names(self) -> list[str]:
        return [TRACKING_TABLE, SKIPPED_TABLE, VERSIONS_TABLE] + [
            t for p in self.projections.values() for t in p.tables]

    def skipped(self) -> list[tuple[str, int, str]]:
        """(projection, position, error) of every entry a projection could not apply."""
        with self.writer.read_transaction() as cursor:
            rows = self._db(cursor).rows(
                "SELECT name, position, error FROM {skipped} ORDER BY position, name")
        return [(r["name"], int(r["position"]), r["error"]) for r in rows]

    def positions(self) -> dict[str, int]:
        with self.writer.read_transaction() as cursor:
            rows = self._db(cursor).rows("SELECT name, position FROM {tracking}")
        return {r["name"]: int(r["position"]) for r in rows if r["name"] in self.projections}

    def read(self, projection: str, query: Callable[[ProjectionDB], Any]) -> Any:
        """Run ``query`` against one projection's tables in a read-only transaction."""
        chosen = self.select([projection])[0]
        with self.writer.read_transaction() as cursor:
            return query(self._db(cursor, chosen))

    def read_current(self, projection: str, query: Callable[[ProjectionDB], Any]) -> Any:
        """``read`` once ``projection`` has caught up with the log (its tables made if missing):
        what a command run against a store without a server following it needs."""
        self.ensure_tables()
        self.catch_up([projection])
        return self.read(projection, query)

    def catch_up(self, names: Iterable[str] | None = None, *, stop: int | None = None,
                 progress: ProgressCallback | None = None) -> int:
        """Apply every entry after each projection's tracking position; entries applied (summed
        over projections).  Projections at the same position share one read of the log."""
        chosen = self.select(names)
        applied = 0
        while True:
            positions = self.positions()
            last = self.source.tree_size() if stop is None else stop
            behind = [p for p in chosen if positions.get(p.name, 0) < last]
            if not behind:
                return applied
            start = min(positions.get(p.name, 0) for p in behind)
            # The furthest behind go first; the others join them once they are level.
            group = [p for p in behind if positions.get(p.name, 0) == start]
            applied += self._follow(group, start, last, progress)

    def rebuild(self, names: Iterable[str] | None = None, *,
                progress: ProgressCallback | None = None) -> int:
        """Empty the projections' tables and replay the whole log into them."""
        chosen = self.select(names)
        with self.writer.write_transaction() as cursor:
            for projection in chosen:
                db = self._db(cursor, projection)
                for table in projection.tables:
                    db.execute(f"DELETE FROM {{{table}}}")
                db.execute("UPDATE {tracking} SET position = 0 WHERE name = {p}", (projection.name,))
                db.execute("DELETE FROM {skipped} WHERE name = {p}", (projection.name,))
        applied = self.catch_up([p.name for p in chosen], progress=progress)
        self._refresh_statistics(chosen)
        return applied

    def _refresh_statistics(self, projections: Sequence[Projection]) -> None:
        """After a bulk reload PostgreSQL's planner still sees the old, empty tables and picks
        sequential scans for the lineage walks.  ANALYZE fixes that (for a role that does not own
        the tables PostgreSQL skips it with a warning; autovacuum then catches up later)."""
        if self.writer.placeholder != "%s":
            return
        with self.writer.write_transaction() as cursor:
            for projection in projections:
                for table in projection.tables:
                    cursor.execute(f"ANALYZE {self.writer.table(table)}")

    def _follow(self, group: list[Projection], start: int, last: int,
                progress: ProgressCallback | None) -> int:
        """Feed positions start+1..last to every projection of ``group`` (all at ``start``)."""
        total, done, applied = last - start, 0, 0
        try:
            for page in _pages(self.source.entries(start + 1, last), self.page_size):
                for projection in group:
                    self._apply_page(projection, page, start)
                    applied += len(page)
                start = page[-1].position
                done += len(page)
                if progress is not None:
                    progress(done, total)
        except TrackingMovedError:
            pass  # another follower got there first: the caller re-reads the positions and goes on
        return applied

    def _apply_page(self, projection: Projection, page: list[ProjectedEntry], expected: int) -> None:
        try:
            self._apply_whole(projection, page, expected)
        except TrackingMovedError:
            raise
        except _OUTAGES:
            raise
        except Exception as exc:  # an entry this projection cannot take: find it, skip only it
            if len(page) > 1:
                for entry in page:
                    self._apply_page(projection, [entry], expected)
                    expected = entry.position
            else:
                self._skip(projection, page[0], expected, exc)

    def _skip(self, projection: Projection, entry: ProjectedEntry, expected: int, exc: Exception) -> None:
        """Move past one entry and say so where admins look (``qledger projections status``)."""
        error = f"{type(exc).__name__}: {exc}".replace("\x00", "\\x00")[:1000]
        log.error("projection %s skips entry %d: %s", projection.name, entry.position, error)
        with self.writer.write_transaction() as cursor:
            db = self._db(cursor, projection)
            self._move(db, projection, entry.position, expected)
            db.execute("INSERT INTO {skipped} (name, position, error) VALUES ({p}, {p}, {p}) "
                       "ON CONFLICT DO NOTHING", (projection.name, entry.position, error))

    @staticmethod
    def _move(db: ProjectionDB, projection: Projection, position: int, expected: int) -> None:
        # The tracking row first: its row lock makes a concurrent follower wait here, and
        # the position check makes it give up once this transaction commits.
        moved = db.rows("UPDATE {tracking} SET position = {p} WHERE name = {p} AND position = {p} "
                        "RETURNING name", (position, projection.name, expected))
        if len(moved) != 1:
            raise TrackingMovedError(f"{projection.name} is no longer at position {expected}")

    def _apply_whole(self, projection: Projection, page: list[ProjectedEntry], expected: int) -> None:
        with self.writer.write_transaction() as cursor:
            db = self._db(cursor, projection)
            self._move(db, projection, page[-1].position, expected)
            projection.apply(db, page)


def projected(row: EntryRow) -> ProjectedEntry:
    if row.state is None:
        raise QledgerError(f"entry {row.position} has no stored event; run `qledger verify`")
    # Read, not verified: the appender checked every entry, and `qledger verify` checks what is
    # stored.  Skipping the canonical-form checks here roughly halves a rebuild's parsing.
    try:
        payload = base64.b64decode(json.loads(row.state)["payload"])
        return ProjectedEntry(row.position, row.leaf_hash.hex(), EntryContent(**json.loads(payload)))
    except (ValueError, KeyError, TypeError) as exc:
        raise QledgerError(f"entry {row.position} is unreadable ({exc}); run `qledger verify`") from exc


def _pages(rows: Iterator[EntryRow], size: int) -> Iterator[list[ProjectedEntry]]:
    page: list[ProjectedEntry] = []
    for row in rows:
        page.append(projected(row))
        if len(page) >= size:
            yield page
            page = []
    if page:
        yield page
