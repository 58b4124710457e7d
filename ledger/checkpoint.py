"""Checkpoints in the C2SP tlog-checkpoint format, signed as C2SP signed notes (Ed25519).

A note is its text, a blank line, then signature lines ``— <name> <base64(keyhash||sig)>``
where keyhash is the first 4 bytes of SHA-256(name || "\\n" || 0x01 || public key) and the
signature covers the text exactly (https://c2sp.org/signed-note, https://c2sp.org/tlog-checkpoint).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass

from qledger.ledger.errors import NoteFormatError
from qledger.ledger.keys import PublicKey, SigningKey

ED25519_ALGORITHM = b"\x01"
SIGNATURE_PREFIX = "\u2014 "


def note_key_hash(name: str, public: PublicKey) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + ED25519_ALGORITHM + public.raw).digest()[:4]


def verifier_key(name: str, public: PublicKey) -> str:
    """The note verifier key string ``<name>+<hex keyhash>+<base64(0x01||key)>``."""
    encoded = base64.b64encode(ED25519_ALGORITHM + public.raw).decode()
    return f"{name}+{note_key_hash(name, public).hex()}+{encoded}"


@dataclass(frozen=True)
class Checkpoint:
    origin: str
    tree_size: int
    root_hash: bytes

    def body(self) -> str:
        return f"{self.origin}\n{self.tree_size}\n{base64.b64encode(self.root_hash).decode()}\n"

    def sign(self, key: SigningKey, name: str | None = None) -> str:
        name = name or self.origin
        text = self.body()
        sig = key.sign(text.encode())
        line = base64.b64encode(note_key_hash(name, key.public) + sig).decode()
        return f"{text}\n{SIGNATURE_PREFIX}{name} {line}\n"


@dataclass(frozen=True)
class NoteSignature:
    name: str
    key_hash: bytes
    signature: bytes


@dataclass(frozen=True)
class SignedNote:
    text: str
    signatures: tuple[NoteSignature, ...]
    checkpoint: Checkpoint

    def signed_by(self, name: str, public: PublicKey) -> bool:
        wanted = note_key_hash(name, public)
        return any(
            s.name == name and s.key_hash == wanted and public.verify(s.signature, self.text.encode())
            for s in self.signatures
        )


def parse_note(note: str) -> SignedNote:
    text, sep, sig_block = note.rpartition("\n\n")
    if not sep or not sig_block.endswith("\n"):
        raise NoteFormatError("signed note has no signature block")
    text += "\n"
    signatures = []
    for line in sig_block[:-1].split("\n"):
        if not line.startswith(SIGNATURE_PREFIX):
            raise NoteFormatError(f"malformed note signature line: {line!r}")
        name, _, encoded = line[len(SIGNATURE_PREFIX) :].rpartition(" ")
        try:
            raw = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise NoteFormatError("note signature is not base64") from exc
        if len(raw) != 4 + 64:
            raise NoteFormatError("note signature has the wrong length for Ed25519")
        signatures.append(NoteSignature(name, raw[:4], raw[4:]))
    lines = text.split("\n")
    try:
        origin, size_text, root_text = lines[0], lines[1], lines[2]
        tree_size = int(size_text)
        root = base64.b64decode(root_text, validate=True)
    except (IndexError, ValueError, binascii.Error) as exc:
        raise NoteFormatError("checkpoint body must be origin, tree size, base64 root") from exc
    if str(tree_size) != size_text or tree_size < 0 or len(root) != 32:
        raise NoteFormatError("checkpoint tree size or root hash malformed")
    return SignedNote(text, tuple(signatures), Checkpoint(origin, tree_size, root))
