"""Per-backend circuit breakers: stop sending work to a backend that keeps failing.

Closed → (``threshold`` consecutive failures) → open → (``cooldown`` elapses) → half-open:
one trial call; success closes, failure opens again.  Every change of state is returned
to the caller, which records it in the ledger as an event of the ``BackendBreaker`` aggregate.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate, event

from qledger.ledger.topics import wire_topics

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


@wire_topics("executor.run")
class BackendBreaker(Aggregate):
    """The ledger's record of one backend's circuit-breaker state changes."""

    @staticmethod
    def create_id(backend: str) -> UUID:
        return uuid5(NAMESPACE_URL, f"qledger:breaker:{backend}")

    @event("Created")
    def __init__(self, *, principal: str, backend: str) -> None:
        self.backend = backend
        self.state = "closed"

    @event("StateChanged")
    def change(self, *, principal: str, state: str, reason: str) -> None:
        self.state = state


@dataclass(frozen=True)
class Transition:
    backend: str
    state: str
    reason: str


class CircuitBreaker:
    def __init__(self, backend: str, threshold: int = 3, cooldown: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.backend, self.threshold, self.cooldown, self.clock = backend, threshold, cooldown, clock
        self.state = CLOSED
        self.failures = 0
        self.opened_at = 0.0
        self._lock = threading.Lock()

    def before_call(self) -> tuple[bool, Transition | None]:
        """May we call the backend now?  Plus the transition that decision caused, if any."""
        with self._lock:
            if self.state == OPEN and self.clock() - self.opened_at >= self.cooldown:
                self.state = HALF_OPEN
                return True, Transition(self.backend, HALF_OPEN, "cooldown elapsed; one trial call")
            return self.state != OPEN, None

    def is_open(self) -> bool:
        with self._lock:
            return self.state == OPEN and self.clock() - self.opened_at < self.cooldown

    def success(self) -> Transition | None:
        with self._lock:
            self.failures = 0
            if self.state != CLOSED:
                self.state = CLOSED
                return Transition(self.backend, CLOSED, "call succeeded")
            return None

    def failure(self, reason: str) -> Transition | None:
        with self._lock:
            self.failures += 1
            if self.state == HALF_OPEN or (self.state == CLOSED and self.failures >= self.threshold):
                self.state = OPEN
                self.opened_at = self.clock()
                return Transition(self.backend, OPEN, f"{self.failures} consecutive failures: {reason}")
            return None


class BreakerBoard:
    def __init__(self, threshold: int = 3, cooldown: float = 10.0) -> None:
        self.threshold, self.cooldown = threshold, cooldown
        self._breakers: dict[str, CircuitBreaker] = {}
        self._lock = threading.Lock()

    def __getitem__(self, backend: str) -> CircuitBreaker:
        with self._lock:
            if backend not in self._breakers:
                self._breakers[backend] = CircuitBreaker(backend, self.threshold, self.cooldown)
            return self._breakers[backend]
