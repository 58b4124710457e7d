"""Event types on the wire stay what clients sign and auditors check, wherever the classes live."""

from __future__ import annotations

from eventsourcing.domain import Aggregate
from eventsourcing.utils import get_topic, resolve_topic

from qledger.governance.policy import AuditEvent, Governance
from qledger.ledger.keyring import KeyRing
from qledger.ledger.topics import wire_topics
from qledger.provenance.bundle_export import BundleExport
from qledger.runs.breaker import BackendBreaker
from qledger.runs.run import RUN_SUBMITTED_TYPE, RUN_TOPIC, Run

WIRE = {
    KeyRing: "ledger.domain:KeyRing",
    Run: "executor.run:Run",
    BackendBreaker: "executor.run:BackendBreaker",
    Governance: "executor.governance:Governance",
    AuditEvent: "executor.governance:AuditEvent",
    BundleExport: "ledger.export_bundle:BundleExport",
}


def test_every_aggregate_and_event_keeps_its_wire_name() -> None:
    for cls, name in WIRE.items():
        assert get_topic(cls) == name and resolve_topic(name) is cls
        events = [m for m in vars(cls).values() if isinstance(m, type) and issubclass(m, Aggregate.Event)]
        assert events
        for kind in events:
            wire = f"{name.split(':')[0]}:{kind.__qualname__}"
            assert get_topic(kind) == wire and resolve_topic(wire) is kind
    assert (RUN_TOPIC, RUN_SUBMITTED_TYPE) == ("executor.run:Run", "executor.run:Run.Submitted")


def test_a_created_aggregate_records_its_wire_name() -> None:
    breaker = BackendBreaker(principal="executor-1", backend="aer_ideal")
    created = breaker.collect_events()[0]
    assert get_topic(type(created)) == "executor.run:BackendBreaker.Created"
    assert created.originator_topic == "executor.run:BackendBreaker"  # type: ignore[attr-defined]


@wire_topics("somewhere.else")
class Moved(Aggregate):
    def __init__(self, *, principal: str) -> None:
        self.principal = principal


def test_the_decorator_names_a_class_by_the_module_given() -> None:
    assert get_topic(Moved) == "somewhere.else:Moved"
    assert get_topic(Moved.Created) == "somewhere.else:Moved.Created"  # type: ignore[attr-defined]
    assert resolve_topic("somewhere.else:Moved.Created") is Moved.Created  # type: ignore[attr-defined]
