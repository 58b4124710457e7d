"""What the verifier reads, behind one ABC: a live store or an exported log file."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

from qledger.ledger import merkle
from qledger.ledger.chain import GENESIS_CHAIN_HASH
from qledger.ledger.registry import KeyRegistry


class EntryRow(NamedTuple):
    """One ledger entry as stored.  Fields a source does not have are None.

    A tuple, not a dataclass: the verifier makes one per entry and ships batches of them
    to its workers, and a tuple is several times cheaper at both.
    """

    position: int
    leaf_hash: bytes
    chain_hash: bytes
    state: bytes | None  # the canonical DSSE envelope; None if the event row is gone
    notification_id: int | None = None
    subtree_hashes: bytes | None = None
    originator_id: str | None = None
    originator_version: int | None = None
    topic: str | None = None


# (after, up to) -> the stored entries after < position <= up to, in position order.
RangeReader = Callable[[int, int], list[EntryRow]]


@dataclass(frozen=True)
class KeyRow:
    key_id: str
    principal: str
    public_key: bytes
    purpose: str
    registered_at: int
    revoked_at: int | None


@dataclass
class StartState:
    """What verification from position N takes on trust from before N."""

    chain_hash: bytes
    frontier: merkle.Frontier
    registry: KeyRegistry

    @classmethod
    def empty(cls) -> StartState:
        return cls(GENESIS_CHAIN_HASH, merkle.Frontier(), KeyRegistry())


class LedgerSource(ABC):
    @abstractmethod
    def origin(self) -> str | None: ...

    @abstractmethod
    def tree_size(self) -> int: ...

    @abstractmethod
    def entries(self, start: int, stop: int | None) -> Iterator[EntryRow]:
        """Entries with start <= position <= stop, in position order, streamed."""

    def last_position(self, stop: int | None) -> int:
        """The last position a read up to ``stop`` (None: to the end) can find."""
        size = self.tree_size()
        return size if stop is None else min(stop, size)

    @abstractmethod
    def key_rows(self) -> list[KeyRow]: ...

    @abstractmethod
    def checkpoint_notes(self) -> list[str]: ...

    def range_reader(self) -> RangeReader | None:
        """A picklable reader another process can call for entries after < position <= up to,
        so parallel verification reads in its workers; None if only this process can read."""
        return None

    def unchained_events(self) -> list[int]:
        """Notification ids of stored events that no ledger entry covers."""
        return []

    def start_state(self, start: int) -> StartState:
        if start <= 1:
            return StartState.empty()
        raise NotImplementedError("this source can only be verified from position 1")
