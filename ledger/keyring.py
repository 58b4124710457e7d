"""The ledger's own eventsourcing aggregate: the key ring pinned by the genesis entry.

Every event of every aggregate in qledger carries ``principal``: who caused it and whose
key signs it.  Payload attributes must be plain JSON values (str, int, float, bool, None,
list, dict) because the payload is canonicalised with RFC 8785 before signing.
"""

from __future__ import annotations

from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate, event
from eventsourcing.utils import get_topic

from qledger.ledger.topics import wire_topics

ADMIN = "admin"
KEY_PURPOSES = frozenset({ADMIN, "client", "executor", "checkpoint", "export"})


@wire_topics("ledger.domain")
class KeyRing(Aggregate):
    """The registry of public keys; one per ledger, created by the genesis entry."""

    @staticmethod
    def create_id(origin: str) -> UUID:
        return uuid5(NAMESPACE_URL, f"qledger:{origin}:keyring")

    @event("Genesis")
    def __init__(
        self, *, principal: str, origin: str, key_id: str, public_key: str, purpose: str
    ) -> None:
        self.origin = origin
        self.keys: dict[str, dict[str, str | bool]] = {}
        self._add(principal, key_id, public_key, purpose)

    @event("KeyRegistered")
    def register_key(
        self, *, principal: str, key_principal: str, key_id: str, public_key: str, purpose: str
    ) -> None:
        self._add(key_principal, key_id, public_key, purpose)

    @event("KeyRevoked")
    def revoke_key(self, *, principal: str, key_id: str, reason: str) -> None:
        self.keys[key_id]["revoked"] = True

    def _add(self, key_principal: str, key_id: str, public_key: str, purpose: str) -> None:
        self.keys[key_id] = {
            "principal": key_principal,
            "public_key": public_key,
            "purpose": purpose,
            "revoked": False,
        }


GENESIS_TYPE = get_topic(KeyRing.Genesis)  # type: ignore[attr-defined]
KEY_REGISTERED_TYPE = get_topic(KeyRing.KeyRegistered)  # type: ignore[attr-defined]
KEY_REVOKED_TYPE = get_topic(KeyRing.KeyRevoked)  # type: ignore[attr-defined]
