"""The eventsourcing Mapper that turns each domain event into a signed DSSE envelope.

Stored state = RFC 8785 bytes of the DSSE envelope; the envelope's payload = RFC 8785
bytes of the entry content (origin, stream, version, type, schema, timestamp, principal,
payload).  Aggregates are rebuilt from the very bytes the verifier checks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast
from uuid import UUID

from eventsourcing.domain import DomainEventProtocol
from eventsourcing.persistence import Mapper, StoredEvent
from eventsourcing.utils import get_topic, resolve_topic

from qledger.ledger import dsse
from qledger.ledger.content import SCHEMA_VERSION, EntryContent
from qledger.ledger.errors import ContentMismatchError, UnknownKeyError
from qledger.ledger.keys import SigningKey

_ENVELOPE_FIELDS = ("originator_id", "originator_version", "timestamp", "principal")


@dataclass(frozen=True)
class SignedHere(StoredEvent):
    """A stored event this process just signed with a key it holds.

    The recorder re-verifies every other envelope before writing; these it trusts,
    because the signature was made a moment ago by the same code, and it takes the parsed
    envelope and content from here instead of parsing the bytes again.
    """

    envelope: dsse.SignedEnvelope | None = field(default=None, compare=False, repr=False)
    content: EntryContent | None = field(default=None, compare=False, repr=False)


def column_mismatch(content: EntryContent, origin: str | None, stream_id: str | None,
                    version: int | None, topic: str | None) -> str | None:
    """How the columns the library reads disagree with the signed content, if they do: checked
    when an entry is appended and again by the verifier.  ``None`` columns are not checked."""
    if origin is not None and content.origin != origin:
        return f"entry names ledger {content.origin!r}, not {origin!r}"
    if topic is not None and (content.event_type != topic or content.stream_id != stream_id
                              or content.stream_version != version):
        return "stored event columns (id, version, topic) differ from the signed content"
    return None


def check_columns(content: EntryContent, stored: StoredEvent, origin: str | None) -> None:
    """The columns the library reads must say what the signed content says."""
    mismatch = column_mismatch(content, origin, str(stored.originator_id), stored.originator_version,
                               stored.topic)
    if mismatch:
        raise ContentMismatchError(mismatch)


class SigningMapper(Mapper[UUID]):
    origin: str = ""
    signers: dict[str, SigningKey]

    def to_stored_event(self, domain_event: DomainEventProtocol[UUID]) -> StoredEvent:
        state: dict[str, Any] = dict(vars(domain_event))
        originator_id, version, timestamp, principal = (state.pop(f) for f in _ENVELOPE_FIELDS)
        topic = get_topic(type(domain_event))
        class_version = getattr(type(domain_event), "class_version", 1)
        if class_version > 1:
            state["class_version"] = class_version
        signer = self.signers.get(principal)
        if signer is None:
            raise UnknownKeyError(f"this process holds no signing key for {principal!r}")
        content = EntryContent(
            origin=self.origin,
            stream_id=str(originator_id),
            stream_version=version,
            event_type=topic,
            schema_version=SCHEMA_VERSION,
            timestamp=cast(datetime, timestamp).isoformat(),
            principal=principal,
            payload=state,
        )
        envelope = dsse.sign(content.to_bytes(), signer)
        return SignedHere(originator_id, version, topic, envelope.canonical, envelope, content)

    def to_domain_event(self, stored_event: StoredEvent) -> DomainEventProtocol[UUID]:
        envelope = dsse.parse(stored_event.state)
        content = EntryContent.from_bytes(envelope.payload)
        check_columns(content, stored_event, None)
        cls = resolve_topic(stored_event.topic)
        event_state: dict[str, Any] = dict(content.payload)
        class_version = getattr(cls, "class_version", 1)
        from_version = event_state.pop("class_version", 1)
        while from_version < class_version:
            getattr(cls, f"upcast_v{from_version}_v{from_version + 1}")(event_state)
            from_version += 1
        event_state["originator_id"] = UUID(content.stream_id)
        event_state["originator_version"] = content.stream_version
        event_state["timestamp"] = datetime.fromisoformat(content.timestamp)
        event_state["principal"] = content.principal
        domain_event = object.__new__(cls)
        object.__setattr__(domain_event, "__dict__", event_state)
        return cast(DomainEventProtocol[UUID], domain_event)
