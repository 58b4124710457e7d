"""Keep projections current while a server runs: wake on PostgreSQL NOTIFY, else poll.

The library's subscriptions exist only for PostgreSQL, so the follower does both: on
PostgreSQL it LISTENs on the channel the events table NOTIFYs at every commit and catches up
the moment a notification arrives; on SQLite, and whenever the LISTEN connection is down, it
polls.  A dropped LISTEN connection is logged, counted and reopened on the next turn; the
poll keeps the projections moving meanwhile, and a catch-up follows every reconnect because
notifications sent while disconnected are lost.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Any

import psycopg
from eventsourcing.persistence import PersistenceError

from qledger.ledger.errors import QledgerError
from qledger.ledger.projection import ProjectionRunner

log = logging.getLogger("qledger.projections")

LISTEN_APPLICATION_NAME = "qledger-projection-listen"
STOP_SLICE = 0.2  # seconds


class ProjectionFollower:
    def __init__(self, runner: ProjectionRunner, *, poll_seconds: float = 2.0,
                 conninfo: str | None = None, channel: str | None = None) -> None:
        """``conninfo`` and ``channel`` turn on LISTEN (PostgreSQL); without them, polling only."""
        self.runner, self.poll = runner, poll_seconds
        self.conninfo, self.channel = conninfo, channel
        self.listen_failures = 0
        self.catch_ups = 0
        self.errors = 0
        self._listener: psycopg.Connection[Any] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="projection-follower", daemon=True)

    def start(self) -> ProjectionFollower:
        self.runner.ensure_tables()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._close_listener()

    def lag(self) -> dict[str, int]:
        """Entries each projection is behind the ledger."""
        size = self.runner.source.tree_size()
        return {name: size - position for name, position in self.runner.positions().items()}

    def _loop(self) -> None:
        while not self._stop.is_set():
            listening = self._ensure_listener()
            try:
                self.runner.catch_up()
                self.catch_ups += 1
            except (PersistenceError, psycopg.Error, QledgerError) as exc:
                log.warning("projection catch-up failed, retrying in %.1fs: %s", self.poll, exc)
            except Exception:
                # A projection that cannot fold an entry must be loud, and must not end the
                # thread: its lag metric keeps rising and every retry logs the traceback.
                self.errors += 1
                log.exception("projection catch-up raised; retrying in %.1fs", self.poll)
            self._wait(listening)

    def _ensure_listener(self) -> bool:
        if self.conninfo is None or self.channel is None:
            return False
        if self._listener is not None:
            return True
        try:
            self._listener = psycopg.connect(self.conninfo, autocommit=True, connect_timeout=5,
                                             application_name=LISTEN_APPLICATION_NAME)
            self._listener.execute(psycopg.sql.SQL("LISTEN {}").format(psycopg.sql.Identifier(self.channel)))
        except psycopg.Error as exc:
            self._lost(exc)
            return False
        return True

    def _wait(self, listening: bool) -> None:
        if not listening or self._listener is None:
            self._stop.wait(self.poll)
            return
        deadline = time.monotonic() + self.poll
        try:
            # In short slices, so that stop() is prompt.  Any notification means new entries;
            # several are drained by one catch-up.
            while not self._stop.is_set() and (left := deadline - time.monotonic()) > 0:
                if any(True for _ in self._listener.notifies(timeout=min(left, STOP_SLICE), stop_after=1)):
                    return
        except psycopg.Error as exc:
            self._lost(exc)

    def _lost(self, exc: Exception) -> None:
        self.listen_failures += 1
        log.warning("LISTEN connection for projections lost (%s); polling every %.1fs until it is back",
                    exc, self.poll)
        self._close_listener()
        # Without this pause a server that refuses connections would be retried in a busy loop.
        self._stop.wait(min(self.poll, 1.0))

    def _close_listener(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(psycopg.Error):
                self._listener.close()
            self._listener = None
