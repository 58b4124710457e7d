"""Ed25519 key pairs, key ids and key files.

A key id is the lowercase hex SHA-256 of the raw 32-byte public key, so anyone holding the
public key can recompute it.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from qledger.ledger.errors import KeyFileError

RAW = serialization.Encoding.Raw
RAW_PUBLIC = serialization.PublicFormat.Raw


def key_id_of(public_raw: bytes) -> str:
    return hashlib.sha256(public_raw).hexdigest()


@dataclass(frozen=True)
class PublicKey:
    """A public key as the ledger records it."""

    raw: bytes

    @cached_property
    def key_id(self) -> str:  # asked for several times per entry signed or checked
        return key_id_of(self.raw)

    def verify(self, signature: bytes, message: bytes) -> bool:
        try:
            return self.verifier()(signature, message)
        except ValueError:  # not a valid Ed25519 public key
            return False

    def verifier(self) -> Callable[[bytes, bytes], bool]:
        """``verify`` with the key parsed once, for checking many signatures by one key."""
        loaded = Ed25519PublicKey.from_public_bytes(self.raw)

        def verify(signature: bytes, message: bytes) -> bool:
            try:
                loaded.verify(signature, message)
            except InvalidSignature:
                return False
            return True

        return verify


class SigningKey:
    """A principal's private key; ``principal`` names who signs with it."""

    def __init__(self, principal: str, private: Ed25519PrivateKey) -> None:
        self.principal = principal
        self._private = private
        self.public = PublicKey(private.public_key().public_bytes(RAW, RAW_PUBLIC))

    @classmethod
    def generate(cls, principal: str) -> SigningKey:
        return cls(principal, Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, principal: str, seed: bytes) -> SigningKey:
        return cls(principal, Ed25519PrivateKey.from_private_bytes(seed))

    @property
    def key_id(self) -> str:
        return self.public.key_id

    def sign(self, message: bytes) -> bytes:
        return self._private.sign(message)

    def seed(self) -> bytes:
        return self._private.private_bytes(
            RAW, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )


class KeyStore:
    """Private keys on disk under ``$QLEDGER_HOME/keys``: one file per principal, mode 0600.

    The file holds the principal name and the hex seed; refusing group/other-readable
    files follows OpenSSH's rule for private keys.
    """

    def __init__(self, home: Path) -> None:
        self.directory = home / "keys"

    @classmethod
    def default(cls) -> KeyStore:
        return cls(Path(os.environ.get("QLEDGER_HOME", Path.home() / ".qledger")))

    def path_for(self, principal: str) -> Path:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in principal)
        return self.directory / f"{safe}.key"

    def exists(self, principal: str) -> bool:
        return self.path_for(principal).exists()

    def save(self, key: SigningKey) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = self.path_for(key.principal)
        # O_EXCL: never overwrite a key silently; 0600 from the first byte written.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(f"{key.principal}\n{key.seed().hex()}\n")
        return path

    def load(self, principal: str) -> SigningKey:
        return self.load_file(self.path_for(principal))

    @staticmethod
    def load_file(path: Path) -> SigningKey:
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
            text = path.read_text()
        except OSError as exc:
            raise KeyFileError(f"cannot read key file {path}: {exc.strerror}") from exc
        if mode & 0o077:
            raise KeyFileError(f"key file {path} is mode {mode:o}, expected 600")
        try:
            principal, seed_hex = text.split()
            return SigningKey.from_seed(principal, bytes.fromhex(seed_hex))
        except ValueError as exc:
            raise KeyFileError(f"key file {path} is malformed") from exc

    def load_or_create(self, principal: str) -> SigningKey:
        if self.exists(principal):
            return self.load(principal)
        key = SigningKey.generate(principal)
        self.save(key)
        return key
