"""Which keys are valid at which ledger position, derived only from the ledger's entries.

Rules (FORMAT.md, "Keys"): position 1 is the genesis entry, self-signed by the root admin
key it pins; later keys come and go by KeyRegistered / KeyRevoked entries signed by a key
of purpose ``admin``.  A key signs validly at position p when it was registered before p
(or pinned by the genesis entry at p = 1) and not revoked before p.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from qledger.ledger.content import EntryContent
from qledger.ledger.errors import (
    ContentMismatchError,
    NonCanonicalEntryError,
    NotAuthorisedError,
    RevokedKeyError,
    UnknownKeyError,
)
from qledger.ledger.keyring import ADMIN, GENESIS_TYPE, KEY_PURPOSES, KEY_REGISTERED_TYPE, KEY_REVOKED_TYPE
from qledger.ledger.keys import PublicKey, key_id_of

KEY_EVENT_TYPES = frozenset({GENESIS_TYPE, KEY_REGISTERED_TYPE, KEY_REVOKED_TYPE})


def valid_at(registered_at: int, revoked_at: int | None, position: int) -> bool:
    """Whether a key signs validly at ``position``: registered before it (or pinned by the
    genesis entry at 1) and not revoked before it.  The entry at ``revoked_at`` is the
    revocation itself, so a key may sign its own revocation and nothing after it."""
    registered = registered_at < position or registered_at == position == 1
    return registered and (revoked_at is None or position <= revoked_at)


def valid_for_checkpoint(registered_at: int, revoked_at: int | None, tree_size: int) -> bool:
    """Whether a key may sign a checkpoint of ``tree_size`` entries: valid as the log stands
    after the last of them, i.e. at the next position."""
    return valid_at(registered_at, revoked_at, tree_size + 1)


@dataclass
class KeyRecord:
    key_id: str
    principal: str
    public: PublicKey
    purpose: str
    registered_at: int
    revoked_at: int | None = None

    def valid_at(self, position: int) -> bool:
        return valid_at(self.registered_at, self.revoked_at, position)

    def valid_for_checkpoint(self, tree_size: int) -> bool:
        return valid_for_checkpoint(self.registered_at, self.revoked_at, tree_size)


def _public_key_field(payload: dict[str, Any]) -> PublicKey:
    try:
        raw = bytes.fromhex(str(payload["public_key"]))
    except (KeyError, ValueError) as exc:
        raise NonCanonicalEntryError("key entry needs public_key as hex") from exc
    if len(raw) != 32:
        raise NonCanonicalEntryError("an Ed25519 public key is 32 bytes")
    if payload.get("key_id") != key_id_of(raw):
        raise ContentMismatchError("key_id is not SHA-256 of the public key")
    if payload.get("purpose") not in KEY_PURPOSES:
        raise NonCanonicalEntryError(f"key purpose must be one of {sorted(KEY_PURPOSES)}")
    return PublicKey(raw)


class KeyRegistry:
    def __init__(self) -> None:
        self.keys: dict[str, KeyRecord] = {}
        self.last_position = 0

    def signer_at(self, key_id: str, position: int) -> KeyRecord:
        """The key record if ``key_id`` may sign at ``position``; raise otherwise."""
        record = self.keys.get(key_id)
        if record is None or not (record.registered_at < position or position == 1):
            raise UnknownKeyError(f"key {key_id[:16]}… is not registered at position {position}")
        if not record.valid_at(position):
            raise RevokedKeyError(
                f"key {key_id[:16]}… was revoked at position {record.revoked_at}"
            )
        return record

    def check_signer(self, key_id: str, content: EntryContent, position: int) -> KeyRecord:
        """Check ``key_id`` may sign ``content`` at ``position`` (before applying it)."""
        return self.check_signer_of(key_id, position, content.event_type, content.principal,
                                    content.payload)

    def check_signer_of(self, key_id: str, position: int, event_type: str, principal: str,
                        payload: dict[str, Any]) -> KeyRecord:
        """``check_signer`` given the content's fields (the payload is read for genesis only)."""
        if event_type == GENESIS_TYPE:
            if position != 1 or key_id != payload.get("key_id"):
                raise NotAuthorisedError("genesis must be position 1, self-signed by its key")
            return KeyRecord(key_id, principal, _public_key_field(payload), ADMIN, 1)
        if position == 1:
            raise ContentMismatchError("position 1 must be the genesis entry")
        record = self.signer_at(key_id, position)
        if record.principal != principal:
            raise NotAuthorisedError(
                f"key {key_id[:16]}… belongs to {record.principal!r}, "
                f"not to {principal!r}"
            )
        if event_type in KEY_EVENT_TYPES and record.purpose != ADMIN:
            raise NotAuthorisedError("key changes must be signed by an admin key")
        return record

    def apply(self, position: int, content: EntryContent) -> KeyRecord | None:
        """Apply a key event at ``position``; return the key it concerns (None if not a key event)."""
        return self.apply_of(position, content.event_type, content.principal, content.payload)

    def apply_of(self, position: int, event_type: str, principal: str,
                 payload: dict[str, Any]) -> KeyRecord | None:
        """``apply`` given the content's fields (the payload is read for key events only)."""
        self.last_position = max(self.last_position, position)
        if event_type in (GENESIS_TYPE, KEY_REGISTERED_TYPE):
            public = _public_key_field(payload)
            if public.key_id in self.keys:
                raise ContentMismatchError(f"key {public.key_id[:16]}… is already registered")
            owner = principal if event_type == GENESIS_TYPE else payload.get("key_principal")
            if not isinstance(owner, str) or not owner:
                raise NonCanonicalEntryError("key entry needs the key's principal")
            record = KeyRecord(public.key_id, owner, public, str(payload["purpose"]), position)
            self.keys[record.key_id] = record
            return record
        if event_type == KEY_REVOKED_TYPE:
            revoked = self.keys.get(str(payload.get("key_id")))
            if revoked is None or revoked.revoked_at is not None:
                raise ContentMismatchError("can only revoke a registered, unrevoked key")
            revoked.revoked_at = position
            return revoked
        return None

    def copy(self) -> KeyRegistry:
        clone = KeyRegistry()
        clone.keys = {
            k: KeyRecord(r.key_id, r.principal, r.public, r.purpose, r.registered_at, r.revoked_at)
            for k, r in self.keys.items()
        }
        clone.last_position = self.last_position
        return clone
