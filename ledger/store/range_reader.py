"""A window of entries read on a connection of its own: how ``verify --jobs`` workers read.

Each worker reads the rows it checks instead of receiving them from the ordered pass,
which saves pickling every envelope across a pipe (a third of the verifier's own cost
per entry).  A reader is plain data, so it crosses to a worker process, which connects
once and keeps the connection for every window it is handed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from qledger.ledger.source import EntryRow

# (connection, sql, params) -> rows: each dialect's way of turning a query into EntryRows.
FetchRows = Callable[[Any, str, Sequence[Any]], list[EntryRow]]


@dataclass(frozen=True)
class EntryRangeReader:
    connect: Callable[..., Any]
    connect_args: tuple[tuple[str, Any], ...]
    fetch: FetchRows
    sql: str  # the joined entry query, windowed by two parameters: after, up to

    def __call__(self, after: int, upto: int) -> list[EntryRow]:
        """The stored entries with after < position <= upto, in position order."""
        connection = _connections.get(self)
        if connection is None:
            connection = _connections[self] = self.connect(**dict(self.connect_args))
        return self.fetch(connection, self.sql, (after, upto))


# One connection per reader per process, for the life of the process (a worker's).
_connections: dict[EntryRangeReader, Any] = {}
