"""The verifier's view of a live store: the very rows the application reads."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from uuid import UUID

from qledger.ledger import merkle
from qledger.ledger.registry import KeyRegistry
from qledger.ledger.source import EntryRow, KeyRow, LedgerSource, StartState
from qledger.ledger.store.chain_writer import ChainWriter
from qledger.ledger.store.range_reader import EntryRangeReader

PAGE = 2000
_WINDOW = " WHERE e.position > {p} AND e.position <= {p} ORDER BY e.position"


class StoreSource(LedgerSource):
    def __init__(self, recorder: ChainWriter, notification_column: str, owner: object = None) -> None:
        self.recorder = recorder
        # Columns in EntryRow's order, so each row becomes an EntryRow without a lookup by name.
        self._joined = (
            "SELECT e.position, e.leaf_hash, e.chain_hash, s.state, e.notification_id, "
            "e.subtree_hashes, CAST(s.originator_id AS TEXT), s.originator_version, s.topic "
            f"FROM {{entries}} e LEFT JOIN {{events}} s ON s.{notification_column} = e.notification_id")
        # The application owns the connection pool and closes it when collected.
        self._owner = owner
        self.column = notification_column

    def _query(self, template: str, params: tuple[Any, ...] = ()) -> list[Any]:
        with self.recorder.read_transaction() as cursor:
            cursor.execute(self.recorder.sql(template), params)
            return list(cursor.fetchall())

    def origin(self) -> str | None:
        return self.recorder.ledger_origin

    def tree_size(self) -> int:
        with self.recorder.read_transaction() as cursor:
            return self.recorder.latest_position(cursor)

    def entries(self, start: int, stop: int | None) -> Iterator[EntryRow]:
        # Each page is a short transaction over a window of PAGE positions, so memory stays at
        # one page.  A window, not LIMIT: PostgreSQL's planner, before statistics exist on a
        # freshly loaded table, sorted every remaining row to find each page's first PAGE.
        last = start - 1
        end = self.last_position(stop)
        while last < end:
            upper = min(end, last + PAGE)
            yield from self._entry_rows(_WINDOW, (last, upper), windowed=True)
            last = upper

    def range_reader(self) -> EntryRangeReader | None:
        return self.recorder.entry_reader(self.recorder.sql(self._joined + _WINDOW))

    def _entry_rows(self, condition: str, params: tuple[Any, ...], windowed: bool = False
                    ) -> list[EntryRow]:
        with self.recorder.read_transaction() as cursor:
            if windowed:
                self.recorder.plan_windows(cursor)
            return self.recorder.fetch_entry_rows(cursor, self.recorder.sql(self._joined + condition),
                                                  params)

    def entry_at(self, position: int) -> EntryRow | None:
        rows = self._entry_rows(" WHERE e.position = {p}", (position,))
        return rows[0] if rows else None

    def stream_entries(self, stream_id: UUID, after_version: int) -> list[EntryRow]:
        """The entries of one aggregate's stream after ``after_version``, in version order."""
        key: Any = stream_id.hex if self.column == "rowid" else stream_id
        return self._entry_rows(" WHERE s.originator_id = {p} AND s.originator_version > {p} "
                                "ORDER BY s.originator_version", (key, after_version))

    def key_rows(self) -> list[KeyRow]:
        rows = self._query("SELECT position, key_id, action, principal, public_key, purpose "
                           "FROM {keys} ORDER BY position, action")
        keys: dict[str, KeyRow] = {}
        for r in rows:
            if r["action"] == "register":
                keys[r["key_id"]] = KeyRow(r["key_id"], r["principal"], bytes(r["public_key"]),
                                           r["purpose"], int(r["position"]), None)
            elif r["key_id"] in keys:
                old = keys[r["key_id"]]
                keys[r["key_id"]] = KeyRow(old.key_id, old.principal, old.public_key,
                                           old.purpose, old.registered_at, int(r["position"]))
        return list(keys.values())

    def checkpoint_notes(self) -> list[str]:
        return [r["note"] for r in self._query("SELECT note FROM {checkpoints} ORDER BY tree_size")]

    def unchained_events(self) -> list[int]:
        rows = self._query(
            "SELECT s." + self.column + " AS nid FROM {events} s WHERE NOT EXISTS "
            "(SELECT 1 FROM {entries} e WHERE e.notification_id = s." + self.column + ") "
            "ORDER BY 1 LIMIT 10")
        return [int(r["nid"]) for r in rows]

    def start_state(self, start: int) -> StartState:
        if start <= 1:
            return StartState.empty()
        with self.recorder.read_transaction() as cursor:
            size = start - 1
            cursor.execute(self.recorder.sql("SELECT chain_hash FROM {entries} WHERE position = {p}"),
                           (size,))
            row = cursor.fetchone()
            if row is None:
                return StartState.empty()
            addresses = merkle.frontier_node_addresses(size)
            nodes = self.recorder.fetch_nodes(cursor, addresses)
            registry = self.recorder.load_registry(cursor)
        trimmed = KeyRegistry()
        for key_id, record in registry.keys.items():
            if record.registered_at < start:
                if record.revoked_at is not None and record.revoked_at >= start:
                    record.revoked_at = None
                trimmed.keys[key_id] = record
        return StartState(bytes(row["chain_hash"]),
                          merkle.Frontier(size, [nodes[a] for a in addresses]), trimmed)
