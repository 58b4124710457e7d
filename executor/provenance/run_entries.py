"""Reading Run entries: which entries are a run's, what they are, times, and the artifacts
they reference."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

from qledger.ledger import dsse
from qledger.ledger.artifacts import artifact_refs
from qledger.ledger.content import EntryContent
from qledger.ledger.errors import NotFoundError
from qledger.ledger.projection import ProjectedEntry
from qledger.ledger.source import EntryRow
from qledger.runs.run import RUN_TOPIC

RUN_EVENT = RUN_TOPIC + "."
TERMINAL_EVENTS = {"Completed": "completed", "Failed": "failed", "Cancelled": "cancelled"}


def utc_text(timestamp: str | datetime) -> str:
    """One sortable spelling of a time, whatever offset or precision it came with."""
    moment = datetime.fromisoformat(timestamp) if isinstance(timestamp, str) else timestamp
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def continued_runs(entries: Sequence[ProjectedEntry]) -> list[str]:
    """Runs these entries add to without starting them: their rows must be read first."""
    return sorted({e.content.stream_id for e in entries if run_event(e) not in (None, "Submitted")})


def run_event(entry: ProjectedEntry) -> str | None:
    """The Run event's name (Submitted, StepRecorded, ...), or None for other entries."""
    kind = entry.content.event_type
    return kind[len(RUN_EVENT):] if kind.startswith(RUN_EVENT) else None


def run_entries(entries: Sequence[ProjectedEntry]) -> Iterator[tuple[ProjectedEntry, str, str]]:
    """(entry, Run event name, run id) for each Run entry among ``entries``, in order."""
    for entry in entries:
        event = run_event(entry)
        if event is not None:
            yield entry, event, entry.content.stream_id


def run_artifact(rows: Iterable[EntryRow], sha256: str) -> dict[str, Any]:
    """The reference to artifact ``sha256`` in one of a run's entries: a run's readers may read
    what its entries name, and nothing else by digest."""
    for row in rows:
        if row.state is None:
            continue
        for reference in artifact_refs(EntryContent.from_bytes(dsse.parse(row.state).payload).payload):
            if reference["sha256"] == sha256:
                return reference
    raise NotFoundError(f"no entry of this run references artifact {sha256!r}", "sha256")
