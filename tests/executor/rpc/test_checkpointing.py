"""The server signs checkpoints by itself: every N entries, and T seconds after the last entry."""

from __future__ import annotations

import itertools
import time

from qledger.ledger.checkpoint import parse_note
from qledger.ledger.verify import verify
from qledger.runs.reference_workflows import BELL
from tests.executor.conftest import ServiceFactory
from tests.ledger.helpers import write_notes


def checkpoint_sizes(service_app: object) -> list[int]:
    from qledger.ledger.app import LedgerApp

    assert isinstance(service_app, LedgerApp)
    return [parse_note(n).checkpoint.tree_size for n in service_app.source().checkpoint_notes()]


def test_a_run_is_checkpointed_every_n_entries(service_factory: ServiceFactory) -> None:
    service = service_factory(checkpoint_every=5, checkpoint_seconds=3600)
    service.app.checkpoint(service.app.checkpoint_policy.key)  # type: ignore[union-attr]
    start = service.app.tree_size()
    entries = service.watch(service.submit(BELL).run.run_id)
    assert entries[-1].event_type.endswith("Run.Completed")
    sizes = checkpoint_sizes(service.app)
    assert sizes[0] == start
    sizes = sizes[1:]
    # Nobody asked for one (no GetCheckpoint); the policy made them as the run appended.
    assert sizes and sizes[0] >= start + 5
    assert all(later - earlier >= 5 for earlier, later in itertools.pairwise(sizes))
    assert service.app.tree_size() - sizes[-1] < 5 + 3  # a save may append a few at once
    report = verify(service.app.source())
    assert report.ok, report.finding
    assert report.checkpoints_checked == 1 + len(sizes)


def test_the_tail_is_checkpointed_after_quiet_seconds(service_factory: ServiceFactory) -> None:
    service = service_factory(checkpoint_every=1_000_000, checkpoint_seconds=0.3)
    write_notes(service.app, "alice", 2)
    size = service.app.tree_size()
    deadline = time.monotonic() + 10
    while size not in checkpoint_sizes(service.app) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert size in checkpoint_sizes(service.app)
