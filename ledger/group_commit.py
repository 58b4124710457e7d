"""Group commit: many writer threads, one transaction per batch of their saves.

Each append pays one lock-and-commit round trip; batching the saves that arrive while
the previous batch commits spreads that cost over the batch, as databases do for WAL.
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future
from typing import Any

from eventsourcing.domain import MutableOrImmutableAggregate

from qledger.ledger.app import LedgerApp

_STOP = object()


class GroupCommitter:
    def __init__(self, app: LedgerApp, max_batch: int = 512) -> None:
        self.app = app
        self.max_batch = max_batch
        self._queue: queue.Queue[Any] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="qledger-group-commit", daemon=True)
        self._thread.start()

    def submit(self, *aggregates: MutableOrImmutableAggregate[Any]) -> Future[None]:
        future: Future[None] = Future()
        self._queue.put((aggregates, future))
        return future

    def close(self) -> None:
        self._queue.put(_STOP)
        self._thread.join()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            batch = [item]
            while len(batch) < self.max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP:
                    self._queue.put(_STOP)
                    break
                batch.append(nxt)
            self._commit(batch)

    def _commit(self, batch: list[tuple[tuple[Any, ...], Future[None]]]) -> None:
        try:
            self.app.save(*(agg for aggregates, _ in batch for agg in aggregates))
        except Exception as exc:
            # The batch was one transaction, so none of it was written.  Saving collected
            # (and cleared) the aggregates' pending events, so a silent retry here would
            # write nothing: every caller is told, and resubmits what it still wants.
            for _, future in batch:
                future.set_exception(exc)
            return
        for _, future in batch:
            future.set_result(None)
