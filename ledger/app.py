"""The eventsourcing Application whose every saved event becomes a signed ledger entry."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from typing import Any, cast
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError, Application
from eventsourcing.persistence import PersistenceError, Recording

from qledger.ledger import merkle
from qledger.ledger.checkpoint import Checkpoint, parse_note
from qledger.ledger.errors import (
    ProofError,
    StoreNotInitialisedError,
    StoreUnavailableError,
    UnknownKeyError,
    UnreadableEntryError,
)
from qledger.ledger.keyring import GENESIS_TYPE, KeyRing
from qledger.ledger.keys import PublicKey, SigningKey
from qledger.ledger.mapper import SigningMapper
from qledger.ledger.store.chain_writer import ChainWriter
from qledger.ledger.store.reader import StoreSource
from qledger.ledger.store.url import StoreURL, resolve_store

DEFAULT_ORIGIN = "qledger.local/ledger"

log = logging.getLogger("qledger.ledger")


class CheckpointPolicy:
    """Checkpoint every ``every`` entries or ``seconds`` seconds, whichever comes first."""

    def __init__(self, key: SigningKey, every: int = 1000, seconds: float = 60.0) -> None:
        self.key, self.every, self.seconds = key, every, seconds
        self.last_size = 0
        self.last_time = time.monotonic()

    def due(self, size: int) -> bool:
        return size - self.last_size >= self.every or (
            size > self.last_size and time.monotonic() - self.last_time >= self.seconds)


class LedgerApp(Application[UUID]):
    name = "qledger"

    def __init__(self, store: StoreURL | str | None = None, signers: Iterable[SigningKey] = (),
                 *, create_tables: bool = True) -> None:
        self.store = store if isinstance(store, StoreURL) else resolve_store(store)
        self._signers = {key.principal: key for key in signers}
        self.checkpoint_policy: CheckpointPolicy | None = None
        env = dict(self.store.env)
        env["CREATE_TABLE"] = "y" if create_tables else "n"
        try:
            super().__init__(env)
            origin = self._read_origin()
        except (PersistenceError, OSError) as exc:
            cause = None
            if self.store.is_postgres:
                # Only here: a SQLite ledger (and verification) never loads the PostgreSQL driver.
                from qledger.ledger.store.postgres import connection_problem
                cause = connection_problem(self.store.env)
            raise StoreUnavailableError(f"cannot open store {self.store.url}: {cause or exc}") from exc
        self._set_origin(origin)

    # -- wiring ---------------------------------------------------------------------------

    def construct_mapper(self) -> SigningMapper:
        mapper = SigningMapper(transcoder=self.construct_transcoder())
        mapper.signers = self._signers
        return mapper

    @property
    def ledger(self) -> ChainWriter:
        return cast(ChainWriter, self.recorder)

    def source(self) -> StoreSource:
        return StoreSource(self.ledger, cast(Any, self.recorder).notification_column, self)

    def add_signer(self, key: SigningKey) -> None:
        self._signers[key.principal] = key

    def _set_origin(self, origin: str | None) -> None:
        self.origin = origin
        cast(SigningMapper, self.mapper).origin = origin or ""
        self.ledger.ledger_origin = origin

    def _read_origin(self) -> str | None:
        try:
            notifications = self.recorder.select_notifications(start=None, limit=1)
        except PersistenceError as exc:
            if "no such table" in str(exc) or "does not exist" in str(exc):
                return None  # not initialised yet: `qledger init` creates the tables
            raise
        if not notifications or notifications[0].topic != GENESIS_TYPE:
            return None
        event = self.mapper.to_domain_event(notifications[0])
        return cast(str, vars(event)["origin"])

    def find(self, aggregate_id: UUID) -> Any | None:
        """The aggregate with this id as recorded, or None if it has no entry yet."""
        try:
            return self.repository.get(aggregate_id)
        except AggregateNotFoundError:
            return None
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            # The library rebuilds an aggregate by calling its event methods with the payload:
            # a member missing or mistyped fails there, for this aggregate only.
            raise UnreadableEntryError(f"the entries of {aggregate_id} cannot be interpreted: {exc}") from exc

    def reload_origin(self) -> None:
        self._set_origin(self._read_origin())

    def require_origin(self) -> str:
        if self.origin is None:
            raise StoreNotInitialisedError(f"store {self.store.url} has no genesis entry")
        return self.origin

    # -- keys -----------------------------------------------------------------------------

    def genesis(self, root: SigningKey, origin: str = DEFAULT_ORIGIN) -> bool:
        """Write the genesis entry pinning ``root``; False if the ledger already has one."""
        if self.origin is not None:
            return False
        self.add_signer(root)
        self._set_origin(origin)
        ring = KeyRing(principal=root.principal, origin=origin, key_id=root.key_id,
                       public_key=root.public.raw.hex(), purpose="admin")
        try:
            self.save(ring)
        except Exception:
            self._set_origin(self._read_origin())
            raise
        return True

    def keyring(self) -> KeyRing:
        return cast(KeyRing, self.repository.get(KeyRing.create_id(self.require_origin())))

    def register_key(self, admin: str, key_principal: str, public: PublicKey, purpose: str) -> None:
        ring = self.keyring()
        ring.register_key(principal=admin, key_principal=key_principal, key_id=public.key_id,
                          public_key=public.raw.hex(), purpose=purpose)
        self.save(ring)

    def revoke_key(self, admin: str, key_id: str, reason: str) -> None:
        ring = self.keyring()
        if key_id not in ring.keys:
            raise UnknownKeyError(f"no key {key_id} in the key ring")
        ring.revoke_key(principal=admin, key_id=key_id, reason=reason)
        self.save(ring)

    def save(self, *objs: Any, **kwargs: Any) -> list[Recording[UUID]]:
        try:
            return super().save(*objs, **kwargs)
        except BaseException:
            # Artifacts staged for these entries must not ride along with a later save.
            self.ledger.discard_staged()
            raise

    # -- tree, checkpoints, proofs -------------------------------------------------------

    def _record(self, processing_event: Any) -> list[Recording[UUID]]:
        recordings = super()._record(processing_event)
        if recordings and self.checkpoint_policy is not None:
            self.checkpoint_if_due(self.ledger.known_size())
        return recordings

    def use_checkpoint_policy(self, policy: CheckpointPolicy) -> None:
        """Checkpoint by ``policy`` from now on, counting its N entries from the last stored
        checkpoint (a restarted server does not start again from zero)."""
        latest = self.latest_checkpoint()
        policy.last_size = 0 if latest is None else parse_note(latest).checkpoint.tree_size
        self.checkpoint_policy = policy

    def checkpoint_if_due(self, size: int | None = None) -> str | None:
        """Checkpoint if the policy says it is time (``size``: the tree size, if known).

        A failure is logged, not raised: the entries it would cover are committed already,
        so their save succeeded, and the next due moment tries again.
        """
        policy = self.checkpoint_policy
        if policy is None:
            return None
        try:
            if not policy.due(self.tree_size() if size is None else size):
                return None
            return self.checkpoint(policy.key)
        except PersistenceError as exc:
            # e.g. another replica stored the checkpoint of this very size a moment ago.
            log.warning("checkpoint not made: %s", exc)
            return None

    def tree_size(self) -> int:
        with self.ledger.read_transaction() as cursor:
            return self.ledger.latest_position(cursor)

    def _fetch(self, cursor: Any) -> merkle.NodeFetcher:
        return lambda addresses: self.ledger.fetch_nodes(cursor, addresses)

    def checkpoint(self, key: SigningKey) -> str:
        """Sign and store a checkpoint of the tree as it is now; return the note."""
        origin = self.require_origin()
        with self.ledger.write_transaction() as cursor:
            size = self.ledger.latest_position(cursor)
            cursor.execute(self.ledger.sql("SELECT note FROM {checkpoints} WHERE tree_size = {p}"),
                           (size,))
            existing = cursor.fetchone()
            if existing is not None:
                return cast(str, existing["note"])
            root = merkle.root_from_nodes(size, self._fetch(cursor))
            note = Checkpoint(origin, size, root).sign(key)
            # Another server (or thread) may sign the same size at the same moment: the first
            # stored note is the checkpoint, and every caller gets that one.
            cursor.execute(self.ledger.sql("INSERT INTO {checkpoints} (tree_size, note) VALUES ({p}, {p}) "
                                           "ON CONFLICT (tree_size) DO NOTHING"), (size, note))
            cursor.execute(self.ledger.sql("SELECT note FROM {checkpoints} WHERE tree_size = {p}"),
                           (size,))
            note = cast(str, cursor.fetchone()["note"])
        if self.checkpoint_policy is not None:
            self.checkpoint_policy.last_size = size
            self.checkpoint_policy.last_time = time.monotonic()
        return note

    def latest_checkpoint(self) -> str | None:
        with self.ledger.read_transaction() as cursor:
            cursor.execute(self.ledger.sql(
                "SELECT note FROM {checkpoints} ORDER BY tree_size DESC LIMIT 1"))
            row = cursor.fetchone()
        return None if row is None else cast(str, row["note"])

    def _size_or_current(self, cursor: Any, size: int | None) -> int:
        current = self.ledger.latest_position(cursor)
        if size is None:
            return current
        if not 0 < size <= current:
            raise ProofError(f"tree size {size} is outside 1..{current}")
        return size

    def inclusion_proof(self, position: int, size: int | None = None) -> dict[str, Any]:
        return self.inclusion_proofs([position], size)[0]

    def inclusion_proofs(self, positions: Sequence[int], size: int | None = None) -> list[dict[str, Any]]:
        """The RFC 9162 inclusion proofs of ``positions`` in one tree (the current one if
        ``size`` is None), read in one transaction, in the order asked for."""
        with self.ledger.read_transaction() as cursor:
            size = self._size_or_current(cursor, size)
            outside = [p for p in positions if not 1 <= p <= size]
            if outside:
                raise ProofError(f"position {outside[0]} is outside a tree of size {size}")
            fetch = self._fetch(cursor)
            root = merkle.root_from_nodes(size, fetch).hex()
            proofs = []
            for position in positions:
                leaf = fetch([(0, position - 1)])[(0, position - 1)]
                proof = merkle.inclusion_proof(position - 1, size, fetch)
                proofs.append({"position": position, "leaf_index": position - 1, "tree_size": size,
                               "leaf_hash": leaf.hex(), "root_hash": root,
                               "inclusion_path": [h.hex() for h in proof]})
        return proofs

    def inclusion_paths(self, positions: Iterable[int], size: int) -> dict[int, list[bytes]]:
        """The audit paths of several entries in the tree of ``size``, read in one transaction."""
        with self.ledger.read_transaction() as cursor:
            size = self._size_or_current(cursor, size)
            fetch = self._fetch(cursor)
            paths = {}
            for position in positions:
                if not 1 <= position <= size:
                    raise ProofError(f"position {position} is outside a tree of size {size}")
                paths[position] = merkle.inclusion_proof(position - 1, size, fetch)
            return paths

    def consistency_proof(self, first: int, second: int) -> dict[str, Any]:
        with self.ledger.read_transaction() as cursor:
            second = self._size_or_current(cursor, second)
            if not 0 < first <= second:
                raise ProofError(f"first size {first} must be in 1..{second}")
            fetch = self._fetch(cursor)
            proof = merkle.consistency_proof(first, second, fetch)
            first_root = merkle.root_from_nodes(first, fetch)
            second_root = merkle.root_from_nodes(second, fetch)
        return {"first": first, "second": second, "first_root": first_root.hex(),
                "second_root": second_root.hex(), "consistency_path": [h.hex() for h in proof]}
