"""An auditor's saved checkpoint: the state a client keeps so that every later checkpoint,
proof or bundle it is shown can be checked to extend what it saw before, with no database (as
immudb's clients keep theirs).  A ledger that rewrote or dropped history after the save cannot
produce a consistency proof from the saved tree to its current one.

Pure: the callers read files and ask servers; this module only decides.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import dataclass

from qledger.ledger import merkle
from qledger.ledger.checkpoint import ED25519_ALGORITHM, SignedNote, note_key_hash, parse_note
from qledger.ledger.errors import CheckpointTrustError, FormatError, InconsistentHistoryError, NoteFormatError
from qledger.ledger.keys import PublicKey


def pinned_checkpoint_key(text: str) -> tuple[PublicKey, str | None]:
    """A checkpoint key as an auditor pins it: hex (``qledger keys public checkpoint``) or a C2SP
    verifier key ``<name>+<hex keyhash>+<base64(0x01||key)>``, which also fixes the signer name."""
    text = text.strip()
    try:
        return PublicKey(bytes.fromhex(text)), None
    except ValueError:
        pass
    name, _, rest = text.partition("+")
    key_hash, _, encoded = rest.partition("+")
    try:
        raw = base64.b64decode(encoded, validate=True)
        public = PublicKey(raw[1:]) if raw[:1] == ED25519_ALGORITHM and len(raw) == 33 else None
    except (binascii.Error, ValueError):
        public = None
    if not name or public is None or note_key_hash(name, public).hex() != key_hash:
        raise FormatError("a checkpoint key is hex, or a verifier key <name>+<keyhash>+<base64 key>")
    return public, name


def checkpoint_note(text: str) -> str:
    """The signed note in ``text``: a note itself, or JSON holding it as ``note`` (what
    ``qledger checkpoint`` and ``qledger audit`` print and save)."""
    if text.lstrip().startswith("{"):
        try:
            note = json.loads(text).get("note")
        except (json.JSONDecodeError, AttributeError):
            note = None
        if not isinstance(note, str):
            raise NoteFormatError("JSON without a checkpoint note under \"note\"")
        return note
    return text


def trusted(note_text: str, key: PublicKey, signer: str | None = None,
            origin: str | None = None) -> SignedNote:
    """The parsed note, if the pinned key signed it (as ``signer``, by default the note's origin)
    and it is for ``origin`` when one is given."""
    note = parse_note(note_text)
    if origin is not None and note.checkpoint.origin != origin:
        raise CheckpointTrustError(f"checkpoint is for log {note.checkpoint.origin!r}, not the saved "
                                   f"{origin!r}")
    if not note.signed_by(signer or note.checkpoint.origin, key):
        raise CheckpointTrustError(f"checkpoint of size {note.checkpoint.tree_size} for "
                                   f"{note.checkpoint.origin!r} is not signed by the pinned key")
    return note


@dataclass(frozen=True)
class Extension:
    """What a check found: the saved tree and the tree shown, and which came first."""
    saved_size: int
    shown_size: int

    def describe(self) -> str:
        if self.saved_size == self.shown_size:
            return f"the same tree of {self.saved_size} entries as saved"
        if self.saved_size < self.shown_size:
            return f"extends the saved tree of {self.saved_size} entries to {self.shown_size}"
        return f"is a prefix ({self.shown_size} entries) of the saved tree of {self.saved_size}"


def check_extension(saved: SignedNote, shown: SignedNote, proof: Sequence[bytes]) -> Extension:
    """That one tree is a prefix of the other: ``proof`` is the RFC 9162 consistency proof from
    the smaller to the larger (none when they have the same size)."""
    old, new = saved.checkpoint, shown.checkpoint
    if old.origin != new.origin:
        raise CheckpointTrustError(f"checkpoints of two logs: {old.origin!r} and {new.origin!r}")
    first, second = sorted((old, new), key=lambda c: c.tree_size)
    if not merkle.verify_consistency(first.tree_size, second.tree_size, first.root_hash,
                                     second.root_hash, proof):
        if first.tree_size == second.tree_size:
            raise InconsistentHistoryError(f"two different trees of {first.tree_size} entries, "
                                           "both signed")
        raise InconsistentHistoryError(f"the tree of {second.tree_size} entries does not extend the "
                                       f"tree of {first.tree_size}: the consistency proof fails")
    return Extension(old.tree_size, new.tree_size)


def proof_path(text: str, first: int, second: int) -> list[bytes]:
    """The path of a consistency proof as ``qledger proof consistency`` prints it, for these sizes."""
    try:
        proof = json.loads(text)
        sizes = (int(proof["first"]), int(proof["second"]))
        path = [bytes.fromhex(h) for h in proof["consistency_path"]]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        raise FormatError("not a consistency proof (qledger proof consistency M N prints one)") from None
    if sizes != (first, second):
        raise FormatError(f"the proof is from size {sizes[0]} to {sizes[1]}; these checkpoints need "
                          f"{first} to {second}")
    return path
