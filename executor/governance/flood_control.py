"""Bounding what floods cost: token buckets per peer and per principal, and refusals counted
per window so that a flood of them becomes a few summary entries, not one entry per call.

Plain logic over an injectable clock; the gRPC edge (``rpc.authz``) says who the peer and the
principal are and records what these classes decide should be recorded.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class FloodLimits:
    """How fast refused calls may come from one peer, and calls from one principal, before
    they are refused with RESOURCE_EXHAUSTED; each may come in a burst of ``burst_seconds``
    worth at once.  Refusals are summarised per ``window_seconds``."""

    denials_per_second: float = 5.0
    calls_per_second: float = 1000.0
    burst_seconds: float = 20.0
    window_seconds: float = 60.0


class TokenBuckets:
    """One bucket of ``burst`` tokens per key, refilled at ``rate`` tokens a second."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic,
                 max_keys: int = 100_000) -> None:
        self.rate, self.burst, self.clock, self.max_keys = rate, burst, clock, max_keys
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)
        self._lock = threading.Lock()

    def _level(self, key: str, now: float) -> float:
        tokens, at = self._buckets.get(key, (self.burst, now))
        return min(self.burst, tokens + (now - at) * self.rate)

    def wait(self, key: str) -> float:
        """Seconds until ``key`` has a token (0: it has one now); nothing is taken."""
        with self._lock:
            level = self._level(key, self.clock())
        return 0.0 if level >= 1 else (1 - level) / self.rate

    def take(self, key: str) -> float:
        """Take a token: 0 if there was one, else the seconds until there is (nothing taken)."""
        now = self.clock()
        with self._lock:
            level = self._level(key, now)
            if level < 1:
                self._buckets[key] = (level, now)
                return (1 - level) / self.rate
            if len(self._buckets) >= self.max_keys and key not in self._buckets:
                # Full buckets are the default state: forgetting them loses nothing.
                self._buckets = {k: (t, a) for k, (t, a) in self._buckets.items()
                                 if min(self.burst, t + (now - a) * self.rate) < self.burst}
            self._buckets[key] = (level - 1, now)
            return 0.0


@dataclass(frozen=True)
class Refusal:
    """What was refused, to whom, from where: the unit refusals are counted in."""

    kind: str  # access_denied or rate_limited
    peer: str  # the caller's address without its port
    subject: str  # the principal, "anonymous" if none was proven
    action: str  # the RPC (not the project it named: a caller chooses that, and could
    # otherwise make every refusal the first of its kind)


@dataclass(frozen=True)
class RefusalSummary:
    refusal: Refusal
    count: int  # refusals in the window after the first (which has an entry of its own)
    window_start: float  # seconds since the epoch
    window_end: float
    reason: str  # the last one's


@dataclass
class _Window:
    start: float
    count: int  # refusals after the first
    reason: str


class RefusalWindows:
    """Counts refusals per ``Refusal`` in windows of ``window_seconds``: the first of a window
    is recorded in full; the rest are counted and come back from ``due`` as one summary once
    the window has ended."""

    def __init__(self, window_seconds: float, clock: Callable[[], float] = time.time) -> None:
        self.window_seconds, self.clock = window_seconds, clock
        self._open: dict[Refusal, _Window] = {}
        self._ended: list[RefusalSummary] = []  # windows that ended before ``due`` was called
        self._lock = threading.Lock()

    def note(self, refusal: Refusal, reason: str) -> bool:
        """Count a refusal; True if it is the first of its window (record it in full)."""
        now = self.clock()
        with self._lock:
            window = self._open.get(refusal)
            if window is not None and now - window.start < self.window_seconds:
                window.count, window.reason = window.count + 1, reason
                return False
            if window is not None and window.count:
                self._ended.append(self._summary(refusal, window, now))
            self._open[refusal] = _Window(now, 0, reason)
            return True

    def due(self, flush_all: bool = False) -> list[RefusalSummary]:
        """Summaries of the windows that have ended (of all, with ``flush_all``) with refusals
        beyond their first; those windows are closed."""
        now = self.clock()
        with self._lock:
            summaries, self._ended = self._ended, []
            for refusal, window in list(self._open.items()):
                if flush_all or now - window.start >= self.window_seconds:
                    del self._open[refusal]
                    if window.count:
                        summaries.append(self._summary(refusal, window, now))
            return summaries

    def _summary(self, refusal: Refusal, window: _Window, now: float) -> RefusalSummary:
        return RefusalSummary(refusal, window.count, window.start,
                              min(now, window.start + self.window_seconds), window.reason)
