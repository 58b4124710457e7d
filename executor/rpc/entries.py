"""A stored ledger entry as the wire carries it."""

from __future__ import annotations

from qledger.api import qledger_pb2 as pb
from qledger.ledger.source import EntryRow


def entry_message(row: EntryRow) -> pb.LedgerEntry:
    return pb.LedgerEntry(position=row.position, envelope=row.state or b"", leaf_hash=row.leaf_hash,
                          chain_hash=row.chain_hash, event_type=row.topic or "",
                          stream_id=row.originator_id or "", stream_version=row.originator_version or 0)
