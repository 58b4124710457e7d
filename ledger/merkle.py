"""RFC 9162 Merkle tree hashing, proofs and proof verification.

Section references are to RFC 9162 (Certificate Transparency v2).  Leaves are 0-based
indexes here, as in the RFC; ledger positions are 1-based (position = index + 1).

Storage model: a *perfect node* (level L, index i) is the root of leaves
[i * 2**L, (i + 1) * 2**L).  It is complete once the leaf at 1-based position
(i + 1) * 2**L is appended, so that entry stores it: entry p stores the perfect nodes of
levels 0..ctz(p).  Any subtree hash the proofs need is a fold of O(log n) perfect nodes,
so a proof costs one read of O(log n) rows and never rehashes leaves.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from qledger.ledger.errors import ProofError

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(data: bytes) -> bytes:
    """MTH({d(0)}) = HASH(0x00 || d(0))  (section 2.1.1)."""
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """MTH(D[n]) = HASH(0x01 || MTH(D[0:k]) || MTH(D[k:n]))  (section 2.1.1)."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def largest_power_of_two_below(n: int) -> int:
    """k such that k < n <= 2k (the split point of section 2.1.1); needs n > 1."""
    return 1 << ((n - 1).bit_length() - 1)


def root_of(leaf_hashes: Sequence[bytes]) -> bytes:
    """MTH over already-hashed leaves, straight from the definition (for small inputs)."""
    n = len(leaf_hashes)
    if n == 0:
        return EMPTY_ROOT
    if n == 1:
        return leaf_hashes[0]
    k = largest_power_of_two_below(n)
    return node_hash(root_of(leaf_hashes[:k]), root_of(leaf_hashes[k:]))


# --- the compact range: the right edge of a growing tree --------------------------------


@dataclass
class Frontier:
    """The perfect subtrees whose concatenation is the whole tree, largest first."""

    size: int = 0
    nodes: list[bytes] = field(default_factory=list)

    def append(self, leaf: bytes) -> list[bytes]:
        """Add a leaf hash; return the perfect nodes it completes, levels 1 and up."""
        self.nodes.append(leaf)
        self.size += 1
        completed: list[bytes] = []
        position = self.size
        while position % 2 == 0:
            right = self.nodes.pop()
            left = self.nodes.pop()
            merged = node_hash(left, right)
            self.nodes.append(merged)
            completed.append(merged)
            position //= 2
        return completed

    def root(self) -> bytes:
        if not self.nodes:
            return EMPTY_ROOT
        root = self.nodes[-1]
        for left in reversed(self.nodes[:-1]):
            root = node_hash(left, root)
        return root

    def copy(self) -> Frontier:
        return Frontier(self.size, list(self.nodes))


def frontier_node_addresses(size: int) -> list[tuple[int, int]]:
    """(level, index) of the frontier's perfect nodes for a tree of ``size`` leaves."""
    addresses = []
    start = 0
    for level in range(size.bit_length() - 1, -1, -1):
        if size & (1 << level):
            addresses.append((level, start >> level))
            start += 1 << level
    return addresses


def storing_position(level: int, index: int) -> int:
    """1-based position of the entry that stores perfect node (level, index)."""
    return (index + 1) << level


def node_from_row(level: int, leaf: bytes, subtree_hashes: bytes) -> bytes:
    if level == 0:
        return leaf
    return subtree_hashes[(level - 1) * HASH_SIZE : level * HASH_SIZE]


# --- subtree hashes from stored perfect nodes -----------------------------------------

NodeAddress = tuple[int, int]
NodeFetcher = Callable[[Iterable[NodeAddress]], Mapping[NodeAddress, bytes]]


def _perfect_nodes(start: int, end: int) -> list[NodeAddress]:
    """The perfect nodes whose fold is MTH(D[start:end]), for the aligned ranges proofs use."""
    size = end - start
    if size & (size - 1) == 0 and start % size == 0:
        return [(size.bit_length() - 1, start // size)]
    k = largest_power_of_two_below(size)
    return _perfect_nodes(start, start + k) + _perfect_nodes(start + k, end)


def _fold(start: int, end: int, nodes: Mapping[NodeAddress, bytes]) -> bytes:
    size = end - start
    if size & (size - 1) == 0 and start % size == 0:
        return nodes[(size.bit_length() - 1, start // size)]
    k = largest_power_of_two_below(size)
    return node_hash(_fold(start, start + k, nodes), _fold(start + k, end, nodes))


def _path(m: int, start: int, end: int) -> list[tuple[int, int]]:
    """PATH(m, D[start:end]) as subtree ranges (section 2.1.3.1)."""
    n = end - start
    if n == 1:
        return []
    k = largest_power_of_two_below(n)
    if m - start < k:
        return [*_path(m, start, start + k), (start + k, end)]
    return [*_path(m, start + k, end), (start, start + k)]


def _subproof(m: int, start: int, end: int, complete: bool) -> list[tuple[int, int]]:
    """SUBPROOF(m, D[start:end], b) as subtree ranges (section 2.1.4.1)."""
    n = end - start
    if m == n:
        return [] if complete else [(start, end)]
    k = largest_power_of_two_below(n)
    if m <= k:
        return [*_subproof(m, start, start + k, complete), (start + k, end)]
    return [*_subproof(m - k, start + k, end, False), (start, start + k)]


def _resolve(ranges: list[tuple[int, int]], fetch: NodeFetcher) -> list[bytes]:
    needed = {address for start, end in ranges for address in _perfect_nodes(start, end)}
    nodes = fetch(sorted(needed))
    return [_fold(start, end, nodes) for start, end in ranges]


def inclusion_proof(index: int, size: int, fetch: NodeFetcher) -> list[bytes]:
    if not 0 <= index < size:
        raise ProofError(f"leaf index {index} is outside a tree of size {size}")
    return _resolve(_path(index, 0, size), fetch)


def consistency_proof(first: int, second: int, fetch: NodeFetcher) -> list[bytes]:
    if not 0 <= first <= second:
        raise ProofError(f"no consistency proof from size {first} to size {second}")
    if first in (0, second):
        return []
    return _resolve(_subproof(first, 0, second, True), fetch)


def root_from_nodes(size: int, fetch: NodeFetcher) -> bytes:
    if size == 0:
        return EMPTY_ROOT
    return _resolve([(0, size)], fetch)[0]


# --- verification (sections 2.1.3.2 and 2.1.4.2) -------------------------------------


def verify_inclusion(
    index: int, size: int, leaf: bytes, proof: Sequence[bytes], root: bytes
) -> bool:
    if index >= size or index < 0:
        return False
    fn, sn = index, size - 1
    r = leaf
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def verify_consistency(
    first: int, second: int, first_root: bytes, second_root: bytes, proof: Sequence[bytes]
) -> bool:
    if first < 0 or first > second:
        return False
    if first == second:
        return not proof and first_root == second_root
    if first == 0:
        return not proof
    if not proof:
        return False
    path = list(proof)
    if first & (first - 1) == 0:
        path.insert(0, first_root)
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return fr == first_root and sr == second_root and sn == 0
