"""Event types are names on the wire, not locations in the code.

eventsourcing names an event by where its class lives (``module:Class.Event``), and every ledger
entry carries that name as its ``event_type`` (and a created aggregate's ``originator_topic`` in
its payload), signed.  So the names are fixed here, once per aggregate, and a class can move
between modules without changing one byte of what clients sign or auditors check.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from eventsourcing.domain import Aggregate
from eventsourcing.utils import get_topic

A = TypeVar("A", bound=type[Aggregate])


def wire_topics(module: str) -> Callable[[A], A]:
    """Class decorator: ``cls`` and each event class defined on it are named ``module:Qualname``
    on the wire, wherever ``cls`` is defined; resolving those names finds them again."""

    def pin(cls: A) -> A:
        kinds: list[type] = [cls, *(member for member in vars(cls).values()
                                    if isinstance(member, type) and issubclass(member, Aggregate.Event)
                                    and member.__qualname__.startswith(cls.__qualname__ + "."))]
        for kind in kinds:
            kind.TOPIC = f"{module}:{kind.__qualname__}"  # type: ignore[attr-defined]
            get_topic(kind)  # registers the name, so stored events resolve to this class
        return cls

    return pin
