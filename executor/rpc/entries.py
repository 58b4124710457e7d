"""A stored ledger entry, and a run, as the wire carries them (and how many proofs one call may ask for)."""

from __future__ import annotations

from qledger.api import qledger_pb2 as pb
from qledger.ledger.canonical import canonical_bytes
from qledger.ledger.source import EntryRow
from qledger.runs.run import Run, results_of

MAX_PROOFS_PER_CALL = 1000  # GetInclusionProofs


def entry_message(row: EntryRow) -> pb.LedgerEntry:
    return pb.LedgerEntry(position=row.position, envelope=row.state or b"", leaf_hash=row.leaf_hash,
                          chain_hash=row.chain_hash, event_type=row.topic or "",
                          stream_id=row.originator_id or "", stream_version=row.originator_version or 0)


def run_message(run: Run) -> pb.Run:
    return pb.Run(run_id=str(run.id), workflow=str(run.workflow.get("name", "")), status=run.status,
                  steps=run.steps, submitted_by=run.submitted_by, error=run.error,
                  version=run.version, workflow_json=canonical_bytes(run.workflow).decode(),
                  rerun_of=run.rerun_of or "", submitted_at=run.created_on.isoformat(),
                  updated_at=run.modified_on.isoformat(),
                  results_json=canonical_bytes(results_of(run.records)).decode())
