"""The hash chain: each entry's chain hash commits to every entry before it."""

from __future__ import annotations

import hashlib

GENESIS_CHAIN_HASH = bytes(32)


def chain_hash(previous: bytes, leaf: bytes) -> bytes:
    """chain_hash(n) = SHA-256(chain_hash(n-1) || leaf_hash(n))."""
    return hashlib.sha256(previous + leaf).digest()
