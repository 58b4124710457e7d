"""The part of a ledger recorder that both stores share: checks and chains every entry.

It runs in two phases around the library's own insert:

* ``prepare`` (no transaction): parse each envelope, check it is canonical, small enough,
  for this ledger, matches the stored event's columns, and that its signature verifies.
* ``chain`` (inside the library's transaction, after its table lock and insert): give each
  entry the next gapless position, check its key is valid *at that position* (so a
  concurrent revocation cannot slip through), and insert its leaf hash, chain hash and the
  Merkle nodes it completes.  (``link`` is the pure part of this.  The PostgreSQL recorder
  may run it before the lock, onto the head it wrote last, and send everything in one
  round trip: if another writer appended meanwhile, the entries' primary key refuses the
  taken position, the transaction rolls back and it chains again under the lock.)

Any error raises before commit, so the library rolls the whole batch back: nothing written.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from eventsourcing.persistence import StoredEvent

from qledger.ledger import dsse, merkle
from qledger.ledger.chain import GENESIS_CHAIN_HASH, chain_hash
from qledger.ledger.content import MAX_ENTRY_BYTES, EntryContent
from qledger.ledger.errors import (
    BadSignatureError,
    NonCanonicalEntryError,
    OversizedEntryError,
    UnknownKeyError,
)
from qledger.ledger.keyring import GENESIS_TYPE
from qledger.ledger.keys import PublicKey
from qledger.ledger.mapper import SignedHere, check_columns
from qledger.ledger.registry import KeyRecord, KeyRegistry
from qledger.ledger.source import EntryRow
from qledger.ledger.store.ledger_tables import ARTIFACTS, CHECKPOINTS, ENTRIES, KEYS
from qledger.ledger.store.range_reader import EntryRangeReader

LATEST_POSITION = "SELECT MAX(position) AS p FROM {entries}"


@dataclass(frozen=True)
class PreparedEntry:
    envelope: dsse.SignedEnvelope
    content: EntryContent
    leaf_hash: bytes


@dataclass
class ChainHead:
    """What the next append needs: the last position, its chain hash, the tree's right edge."""

    position: int
    chain_hash: bytes
    frontier: merkle.Frontier
    registry: KeyRegistry

    def copy(self) -> ChainHead:
        return ChainHead(self.position, self.chain_hash, self.frontier.copy(), self.registry.copy())


@dataclass
class ChainLinks:
    """The rows that chain a batch of entries onto a head, and the head after them."""

    head: ChainHead
    entry_rows: list[tuple[int, bytes, bytes, bytes]] = field(default_factory=list)  # position, hashes
    key_rows: list[tuple[int, str, str, str, bytes, str]] = field(default_factory=list)


def prepare_entry(stored: StoredEvent, origin: str | None) -> PreparedEntry:
    if len(stored.state) > MAX_ENTRY_BYTES:
        raise OversizedEntryError(
            f"entry of {len(stored.state)} bytes exceeds the {MAX_ENTRY_BYTES}-byte limit; "
            "store large artifacts by digest"
        )
    if isinstance(stored, SignedHere) and stored.envelope and stored.content:
        envelope, content = stored.envelope, stored.content
    else:
        envelope = dsse.parse(stored.state)
        content = EntryContent.from_bytes(envelope.payload)
    if envelope.payload_type != dsse.EVENT_PAYLOAD_TYPE:
        raise NonCanonicalEntryError(f"payloadType must be {dsse.EVENT_PAYLOAD_TYPE}")
    check_columns(content, stored, origin)
    return PreparedEntry(envelope, content, merkle.leaf_hash(stored.state))


class ChainWriter(ABC):
    """Mixed into a library recorder; the subclass supplies SQL for its dialect."""

    events_table_name: str
    ledger_origin: str | None = None

    def init_chain_writer(self) -> None:
        self._head: ChainHead | None = None
        self._pending_head: ChainHead | None = None
        self._prepared: list[PreparedEntry] = []
        self._staged = threading.local()
        self._artifacts: list[tuple[str, str, int, bytes]] = []
        self._statements: list[tuple[str, tuple[Any, ...]]] = []
        self._write_lock = threading.Lock()
        # Same text each time, so the driver's own caches (psycopg's prepared statements) hit.
        self._sql_cache: dict[str, str] = {}

    # -- dialect ----------------------------------------------------------------------

    placeholder: str  # the driver's parameter marker
    column_types: ClassVar[dict[str, str]]  # what {int}, {real} and {blob} are in this dialect's DDL

    @abstractmethod
    def table(self, name: str) -> str:
        """``name`` as SQL, qualified by the store's schema where it has one."""

    def format_sql(self, template: str, **tables: str) -> str:
        """Fill table names ({entries}, {keys}, {checkpoints}, {events}, {artifacts}, and any
        ``tables`` given as key=table), the parameter marker ({p}) and column types into
        ``template``: the one place that knows the dialect."""
        names = {"entries": ENTRIES, "keys": KEYS, "checkpoints": CHECKPOINTS,
                 "events": self.events_table_name, "artifacts": ARTIFACTS, **tables}
        return template.format(p=self.placeholder, **self.column_types,
                               **{key: self.table(name) for key, name in names.items()})

    def in_list(self, count: int) -> str:
        """Parameter markers for an IN (...) list of ``count`` values."""
        return ",".join([self.placeholder] * count)

    def sql(self, template: str) -> str:
        """``format_sql``, cached: the same text each time, so the driver's caches hit."""
        cached = self._sql_cache.get(template)
        if cached is None:
            cached = self._sql_cache[template] = self.format_sql(template)
        return cached

    datastore: Any  # the library's SQLiteDatastore or PostgresDatastore

    @abstractmethod
    def fetch_entry_rows(self, cursor: Any, sql: str, params: Sequence[Any]) -> list[EntryRow]:
        """Run ``sql``, whose columns are EntryRow's fields in order, and return its rows."""

    @abstractmethod
    def entry_reader(self, sql: str) -> EntryRangeReader | None:
        """A reader running ``sql`` (windowed by after, up to) on a connection of its own, for
        another process; None if no other process can open this store."""

    @abstractmethod
    def plan_windows(self, cursor: Any) -> None:
        """Make the rest of this read transaction read windows of entries by position with the
        plan such a window wants, whatever the statistics."""

    def read_transaction(self) -> Any:
        """A context manager yielding a cursor in a transaction that is rolled back."""
        return self.datastore.transaction(commit=False)

    def write_transaction(self) -> Any:
        return self.datastore.transaction(commit=True)

    # -- queries shared by writer and readers ----------------------------------------

    def latest_position(self, cursor: Any) -> int:
        """The ledger's tree size: its last position, 0 when empty."""
        cursor.execute(self.sql(LATEST_POSITION))
        return int(cursor.fetchone()["p"] or 0)

    def load_head(self, cursor: Any) -> ChainHead:
        cursor.execute(self.sql("SELECT position, chain_hash FROM {entries} "
                                "ORDER BY position DESC LIMIT 1"))
        row = cursor.fetchone()
        if row is None:
            return ChainHead(0, GENESIS_CHAIN_HASH, merkle.Frontier(), KeyRegistry())
        size = int(row["position"])
        addresses = merkle.frontier_node_addresses(size)
        nodes = self.fetch_nodes(cursor, addresses)
        frontier = merkle.Frontier(size, [nodes[a] for a in addresses])
        return ChainHead(size, bytes(row["chain_hash"]), frontier, self.load_registry(cursor))

    def fetch_nodes(
        self, cursor: Any, addresses: Iterable[merkle.NodeAddress]
    ) -> dict[merkle.NodeAddress, bytes]:
        wanted = list(addresses)
        positions = sorted({merkle.storing_position(level, index) for level, index in wanted})
        if not positions:
            return {}
        cursor.execute(
            self.sql(f"SELECT position, leaf_hash, subtree_hashes FROM {{entries}} "
                     f"WHERE position IN ({self.in_list(len(positions))})"),
            positions,
        )
        rows = {int(r["position"]): (bytes(r["leaf_hash"]), bytes(r["subtree_hashes"]))
                for r in cursor.fetchall()}
        nodes = {}
        for level, index in wanted:
            leaf, subtrees = rows[merkle.storing_position(level, index)]
            nodes[(level, index)] = merkle.node_from_row(level, leaf, subtrees)
        return nodes

    def load_registry(self, cursor: Any) -> KeyRegistry:
        cursor.execute(self.sql("SELECT position, key_id, action, principal, public_key, purpose "
                                "FROM {keys} ORDER BY position, action"))
        return registry_from_key_rows(cursor.fetchall())

    def stage_artifact(self, sha256: str, media_type: str, data: bytes) -> None:
        """Insert this artifact with the next entries the calling thread appends."""
        staged = getattr(self._staged, "rows", None)
        if staged is None:
            staged = self._staged.rows = []
        staged.append((sha256, media_type, len(data), data))

    def stage_statement(self, sql: str, params: tuple[Any, ...]) -> None:
        """Execute ``sql`` (in this dialect, placeholders already its own) in the transaction of
        the next entries the calling thread appends: both are stored, or neither."""
        staged = getattr(self._staged, "statements", None)
        if staged is None:
            staged = self._staged.statements = []
        staged.append((sql, params))

    def discard_staged(self) -> None:
        """Drop what this thread staged: the save it was meant for failed."""
        self._staged.rows = []
        self._staged.statements = []

    # -- phase 1: outside the transaction ---------------------------------------------

    def prepare(self, stored_events: Sequence[StoredEvent]) -> list[PreparedEntry]:
        prepared = [prepare_entry(s, self.ledger_origin) for s in stored_events]
        for stored, entry in zip(stored_events, prepared, strict=True):
            if isinstance(stored, SignedHere):
                continue
            public = self._public_key_for(entry)
            if not entry.envelope.signature_valid(public):
                raise BadSignatureError(
                    f"signature by key {entry.envelope.key_id[:16]}… does not verify "
                    f"for {entry.content.event_type} v{entry.content.stream_version}"
                )
        return prepared

    def known_size(self) -> int | None:
        """The tree size after this process's last append, without asking the store."""
        head = self._head
        return None if head is None else head.position

    def key_record(self, key_id: str) -> KeyRecord | None:
        """The key as the ledger currently records it (re-read once if not known yet)."""
        for refresh in (False, True):
            # One read of the shared head: a failed append on another thread may reset it to
            # None at any moment.  A head loaded here may be older than the table by the time it
            # is stored; appends check the head against the table, so that costs a re-read.
            head = self._head
            if refresh or head is None:
                with self.read_transaction() as cursor:
                    head = self._head = self.load_head(cursor)
            record = head.registry.keys.get(key_id)
            if record is not None:
                return record
        return None

    def _public_key_for(self, entry: PreparedEntry) -> PublicKey:
        if entry.content.event_type == GENESIS_TYPE:
            return PublicKey(bytes.fromhex(str(entry.content.payload.get("public_key", ""))))
        record = self.key_record(entry.envelope.key_id)
        if record is not None:
            return record.public
        raise UnknownKeyError(f"key {entry.envelope.key_id[:16]}… is not registered")

    # -- phase 2: inside the transaction, table lock held ----------------------------

    def link(self, head: ChainHead) -> ChainLinks:
        """Chain the prepared entries onto ``head`` (which this advances): no I/O."""
        links = ChainLinks(head)
        for entry in self._prepared:
            position = head.position + 1
            head.registry.check_signer(entry.envelope.key_id, entry.content, position)
            record = head.registry.apply(position, entry.content)
            if record is not None:
                action = "revoke" if record.revoked_at == position else "register"
                links.key_rows.append((position, record.key_id, action, record.principal,
                                       record.public.raw, record.purpose))
            head.chain_hash = chain_hash(head.chain_hash, entry.leaf_hash)
            completed = head.frontier.append(entry.leaf_hash)
            head.position = position
            links.entry_rows.append((position, entry.leaf_hash, head.chain_hash, b"".join(completed)))
        return links

    def write_links(self, cursor: Any, links: ChainLinks, notification_ids: Sequence[int]) -> None:
        """Insert the links' rows, each entry naming its event by the id the library gave it."""
        cursor.executemany(
            self.sql("INSERT INTO {entries} (position, notification_id, leaf_hash, chain_hash, "
                     "subtree_hashes) VALUES ({p}, {p}, {p}, {p}, {p})"),
            [(position, notification_id, *hashes) for (position, *hashes), notification_id
             in zip(links.entry_rows, notification_ids, strict=True)],
        )
        self.write_key_and_artifact_rows(cursor, links)

    def write_key_and_artifact_rows(self, cursor: Any, links: ChainLinks) -> None:
        if links.key_rows:
            cursor.executemany(
                self.sql("INSERT INTO {keys} (position, key_id, action, principal, public_key, "
                         "purpose) VALUES ({p}, {p}, {p}, {p}, {p}, {p})"),
                links.key_rows,
            )
        if self._artifacts:
            cursor.executemany(
                self.sql("INSERT INTO {artifacts} (sha256, media_type, size, data) "
                         "VALUES ({p}, {p}, {p}, {p}) ON CONFLICT (sha256) DO NOTHING"),
                self._artifacts,
            )
        for sql, params in self._statements:
            cursor.execute(sql, params)

    def chain(self, cursor: Any, notification_ids: Sequence[int], latest: int | None = None) -> None:
        """Chain the prepared entries; ``latest`` is the table's last position if already read."""
        head = self.load_head(cursor) if self._head is None else self._head.copy()
        if self._head is not None:
            # Another process may have appended since we last looked; trust only the table.
            if latest is None:
                latest = self.latest_position(cursor)
            if latest != head.position:
                head = self.load_head(cursor)
        self.write_links(cursor, self.link(head), notification_ids)
        self._pending_head = head

    # -- around the library's insert ----------------------------------------------------

    def run_insert(self, stored_events: Sequence[StoredEvent], insert: Any) -> Any:
        prepared = self.prepare(stored_events)
        # Taken now: if this insert fails they go with it, and a retried step stages them again.
        artifacts, self._staged.rows = getattr(self._staged, "rows", None) or [], []
        statements, self._staged.statements = getattr(self._staged, "statements", None) or [], []
        with self._write_lock:
            self._prepared = prepared
            self._artifacts = artifacts
            self._statements = statements
            self._pending_head = None
            try:
                result = insert()
            except BaseException:
                # The transaction rolled back; the cached head may be ahead of the table.
                self._head = None
                raise
            finally:
                self._prepared = []
                self._artifacts = []
                self._statements = []
            self._head = self._pending_head
            return result


def registry_from_key_rows(rows: Iterable[Any]) -> KeyRegistry:
    registry = KeyRegistry()
    for row in rows:
        position = int(row["position"])
        if row["action"] == "register":
            registry.keys[row["key_id"]] = KeyRecord(
                row["key_id"], row["principal"], PublicKey(bytes(row["public_key"])),
                row["purpose"], position,
            )
        elif row["key_id"] in registry.keys:
            registry.keys[row["key_id"]].revoked_at = position
        registry.last_position = max(registry.last_position, position)
    return registry
