"""The PostgreSQL ledger recorder, and the admin set-up that makes ledger tables append-only."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any, ClassVar, cast

import psycopg
from eventsourcing.persistence import IntegrityError, InterfaceError, OperationalError, StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore
from eventsourcing.utils import retry
from psycopg.sql import SQL, Composed, Identifier, Literal

from qledger.ledger.source import EntryRow
from qledger.ledger.store.chain_writer import LATEST_POSITION, ChainHead, ChainWriter
from qledger.ledger.store.ledger_tables import CHECKPOINTS, ENTRIES, KEYS, TABLE_DDL
from qledger.ledger.store.range_reader import EntryRangeReader

APPEND_ONLY_FUNCTION = "qledger_append_only"

# How a window of entries by position is read, whatever the statistics say: an ordered scan
# of the entries' primary key, each event row fetched by its index, no parallel workers.  A
# store loaded since its last ANALYZE (or never analysed: autovacuum off) has no statistics,
# and then the planner scanned and sorted the whole entries table for every window: at a
# million entries, some 28 times the server's work of the index plan (45 against 1.6 ms).
WINDOW_PLAN = {"enable_seqscan": "off", "enable_bitmapscan": "off",
               "max_parallel_workers_per_gather": "0"}
_SET_WINDOW_PLAN = "SELECT " + ", ".join(f"set_config('{name}', '{value}', true)"
                                         for name, value in WINDOW_PLAN.items())


class LedgerPostgresRecorder(PostgresApplicationRecorder, ChainWriter):
    notification_column = "notification_id"

    def __init__(self, datastore: PostgresDatastore, *, events_table_name: str = "stored_events"):
        super().__init__(datastore, events_table_name=events_table_name)
        self.init_chain_writer()
        # The library sends a batch as an array of (id, version, topic, state) composites in
        # text, which spells every envelope in hex and escapes it with regular expressions
        # (a quarter of the CPU of a group-commit append); its own statement takes the array
        # in binary as well.
        library_text = self.insert_events_statement.as_string(None)
        if library_text.count("unnest(%s::") == 1:
            self.insert_events_statement = Composed(
                [SQL(library_text.replace("unnest(%s::", "unnest(%b::"))])
        self._sole_writer = False
        schema = datastore.schema
        for ddl in TABLE_DDL:
            self.sql_create_statements.append(SQL(self.sql(ddl)))  # type: ignore[arg-type]
        self.sql_create_statements += append_only_statements(schema, self.ledger_table_names())
        # The library serialises writers with LOCK TABLE ... IN EXCLUSIVE MODE, which needs
        # UPDATE/DELETE/TRUNCATE privilege; the service role has INSERT and SELECT only.  A
        # transaction-scoped advisory lock serialises every writer of this ledger the same
        # way (all of them come through this recorder) and needs no privilege at all.
        lock_key = int.from_bytes(
            hashlib.sha256(f"qledger:{schema}.{events_table_name}".encode()).digest()[:8],
            "big", signed=True)
        self.lock_table_statements = [
            SQL("SET LOCAL lock_timeout = '{0}s'").format(datastore.lock_timeout),
            SQL("SELECT pg_advisory_xact_lock({0})").format(Literal(lock_key)),
        ]

    def ledger_table_names(self) -> list[str]:
        return [self.events_table_name, ENTRIES, KEYS, CHECKPOINTS]

    placeholder = "%s"
    column_types: ClassVar[dict[str, str]] = {"int": "bigint", "real": "double precision", "blob": "bytea"}

    def table(self, name: str) -> str:
        return f"{Identifier(self.datastore.schema).as_string()}.{Identifier(name).as_string()}"

    def fetch_entry_rows(self, cursor: Any, sql: str, params: Sequence[Any]) -> list[EntryRow]:
        return read_entry_rows(cursor.connection, sql, params)

    def entry_reader(self, sql: str) -> EntryRangeReader | None:
        settings = cast(dict[str, Any], self.datastore.pool.kwargs)
        args = {name: settings[name] for name in ("dbname", "host", "port", "user", "password")}
        # This connection reads nothing but windows, so the window plan is its session's
        # setting; every window runs the same statement, so it is prepared at once.
        options = " ".join(f"-c {name}={value}" for name, value in WINDOW_PLAN.items())
        args |= {"autocommit": True, "prepare_threshold": 0, "options": options}
        return EntryRangeReader(psycopg.connect, tuple(sorted(args.items())), read_entry_rows, sql)

    def plan_windows(self, cursor: Any) -> None:
        cursor.execute(_SET_WINDOW_PLAN)

    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        return self.run_insert(  # type: ignore[no-any-return]
            stored_events, lambda: self._insert_chained(stored_events, **kwargs))

    @retry((InterfaceError, OperationalError), max_attempts=10, wait=0.2)
    def _insert_chained(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Sequence[int]:
        # The library's own insert_events catches exceptions inside its transaction block
        # and re-raises them after COMMIT, so an entry refused by ``chain`` would still be
        # committed to the events table.  Here every exception leaves through
        # ``conn.transaction()``, which rolls back.
        if self._head is not None and self._sole_writer:
            try:
                return self._insert_in_one_flight(stored_events, self._head.copy(), **kwargs)
            except IntegrityError as exc:
                if _constraint(exc) != f"{ENTRIES}_pkey":
                    raise
                # Another process appended since our last append: its entry holds the
                # position we chained onto.  Everything rolled back; read the head this time.
                self._sole_writer = False
        return self._insert_reading_head(stored_events, **kwargs)

    def _insert_in_one_flight(self, stored_events: Sequence[StoredEvent], head: ChainHead,
                              **kwargs: Any) -> Sequence[int]:
        """Chain onto the head we wrote last, sending lock, inserts and COMMIT in one round trip.

        Positions are the entries' primary key and gapless, so if any other writer appended
        since, position ``head.position + 1`` is taken and the insert fails: a stale head can
        cost a retry, never a fork.  Each entry finds its event's notification id in SQL, by
        the (stream, version) key the library just inserted, so nothing waits for RETURNING.
        """
        links = self.link(head)
        entries_sql = self.sql(
            "INSERT INTO {entries} (position, notification_id, leaf_hash, chain_hash, subtree_hashes) "
            "VALUES ({p}, (SELECT notification_id FROM {events} WHERE originator_id = {p} "
            "AND originator_version = {p}), {p}, {p}, {p})")
        rows = [(position, stored.originator_id, stored.originator_version, *hashes)
                for (position, *hashes), stored in zip(links.entry_rows, stored_events, strict=True)]
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            with conn.pipeline(), conn.transaction(), conn.cursor() as chained:
                self._insert_events(curs, stored_events, **kwargs)
                self._insert_stored_events(curs, stored_events, **kwargs)
                chained.executemany(entries_sql, rows)
                self.write_key_and_artifact_rows(chained, links)
            notification_ids = self._fetch_ids_after_insert_events(curs, stored_events, **kwargs)
        assert notification_ids is not None
        self._pending_head = links.head
        return notification_ids

    def _insert_reading_head(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Sequence[int]:
        """Read the chain's head under the lock: the first append, and while others append too."""
        # Pipeline mode sends the lock, insert and chain statements without waiting for each
        # reply; the exception (if any) still leaves through conn.transaction().
        known = None if self._head is None else self._head.position
        with (self.datastore.get_connection() as conn, conn.pipeline() as pipeline,
              conn.transaction(), conn.cursor() as curs):
            self._insert_events(curs, stored_events, **kwargs)
            # Takes the library's EXCLUSIVE table lock, so positions follow commit order
            # and concurrent writers cannot fork the chain.
            self._insert_stored_events(curs, stored_events, **kwargs)
            # Ask for the head in the same round trip as the insert (the lock is already
            # queued ahead of it), so chaining adds no round trip of its own.
            with conn.cursor() as head:
                head.execute(self.sql(LATEST_POSITION))
                pipeline.sync()
                latest = int(head.fetchone()["p"] or 0)  # type: ignore[index]
            notification_ids = self._fetch_ids_after_insert_events(curs, stored_events, **kwargs)
            assert notification_ids is not None
            self.chain(curs, notification_ids, latest)
        # Nobody else appended since our last append: next time, chain without asking.
        self._sole_writer = known == latest
        return notification_ids


def _entry_row_maker(cursor: Any) -> Any:
    return EntryRow._make


def read_entry_rows(connection: Any, sql: str, params: Sequence[Any]) -> list[EntryRow]:
    # Binary results: envelopes arrive as bytes, not as hex text for both sides to convert.
    with connection.cursor(row_factory=_entry_row_maker, binary=True) as rows:
        rows.execute(sql, params)
        return rows.fetchall()  # type: ignore[no-any-return]


def _constraint(exc: BaseException) -> str | None:
    cause = exc.__cause__
    return cause.diag.constraint_name if isinstance(cause, psycopg.Error) else None


def append_only_statements(schema: str, tables: Sequence[str]) -> list[Any]:
    """Triggers refusing UPDATE, DELETE and TRUNCATE; safe to run again."""
    function = SQL("{}.{}").format(Identifier(schema), Identifier(APPEND_ONLY_FUNCTION))
    statements: list[Any] = [
        SQL(
            "CREATE OR REPLACE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql AS $$ "
            "BEGIN RAISE EXCEPTION 'qledger: % is append-only, % refused', "
            "TG_TABLE_NAME, TG_OP USING ERRCODE = 'insufficient_privilege'; END $$"
        ).format(fn=function)
    ]
    for table in tables:
        target = SQL("{}.{}").format(Identifier(schema), Identifier(table))
        statements += [
            SQL(
                "CREATE OR REPLACE TRIGGER {name} BEFORE UPDATE OR DELETE ON {target} "
                "FOR EACH ROW EXECUTE FUNCTION {fn}()"
            ).format(name=Identifier(f"{table}_append_only"), target=target, fn=function),
            SQL(
                "CREATE OR REPLACE TRIGGER {name} BEFORE TRUNCATE ON {target} "
                "FOR EACH STATEMENT EXECUTE FUNCTION {fn}()"
            ).format(name=Identifier(f"{table}_no_truncate"), target=target, fn=function),
        ]
    return statements


def grant_statements(schema: str, role: str, tables: Sequence[str],
                     privileges: str = "SELECT, INSERT") -> list[Any]:
    """The service role may INSERT and SELECT, nothing else, on ledger tables."""
    role_id = Identifier(role)
    statements: list[Any] = [
        SQL(
            # Roles belong to the cluster: two stores initialised at once may both find the role
            # missing; the second CREATE then fails, and the role it wanted exists.
            "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = {name}) THEN "
            "BEGIN CREATE ROLE {role} LOGIN; EXCEPTION WHEN duplicate_object OR unique_violation THEN "
            "NULL; END; END IF; END $$"
        ).format(name=role, role=role_id),
        SQL("GRANT USAGE ON SCHEMA {} TO {}").format(Identifier(schema), role_id),
    ]
    for table in tables:
        target = SQL("{}.{}").format(Identifier(schema), Identifier(table))
        statements += [
            SQL("REVOKE ALL ON {} FROM {}").format(target, role_id),
            SQL("GRANT " + privileges + " ON {} TO {}").format(target, role_id),
        ]
    statements.append(
        SQL("GRANT USAGE ON ALL SEQUENCES IN SCHEMA {} TO {}").format(Identifier(schema), role_id)
    )
    return statements


def connection_problem(env: dict[str, str]) -> str | None:
    """What stops one plain connection with the store's settings (the pool only says that it
    timed out): "role ... does not exist", "Connection refused"...; None if one connects."""
    try:
        with psycopg.connect(host=env["POSTGRES_HOST"], port=env["POSTGRES_PORT"],
                             dbname=env["POSTGRES_DBNAME"], user=env["POSTGRES_USER"],
                             password=env.get("POSTGRES_PASSWORD") or None,
                             connect_timeout=int(env.get("POSTGRES_CONNECT_TIMEOUT") or 5)):
            return None
    except psycopg.Error as exc:
        return " ".join(str(exc).split())  # one line: libpq's messages span several
