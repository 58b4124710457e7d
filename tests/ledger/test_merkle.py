"""RFC 9162 proofs: property-tested, and the root checked against pymerkle (an independent implementation)."""

from __future__ import annotations

import hashlib

from hypothesis import given, settings
from hypothesis import strategies as st
from pymerkle import InmemoryTree

from qledger.ledger import merkle


def leaves(n: int) -> list[bytes]:
    return [merkle.leaf_hash(f"entry {i}".encode()) for i in range(n)]


def fetcher(leaf_hashes: list[bytes]) -> merkle.NodeFetcher:
    """Serve perfect nodes the way the store does: from what Frontier.append completed."""
    stored: dict[tuple[int, int], bytes] = {}
    frontier = merkle.Frontier()
    for i, leaf in enumerate(leaf_hashes):
        stored[(0, i)] = leaf
        for level, node in enumerate(frontier.append(leaf), start=1):
            stored[(level, (i + 1 >> level) - 1)] = node
    return lambda addresses: {a: stored[a] for a in addresses}


def flip(data: bytes, bit: int) -> bytes:
    index = bit % (len(data) * 8)
    out = bytearray(data)
    out[index // 8] ^= 1 << (index % 8)
    return bytes(out)


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=0, max_value=300))
def test_root_agrees_with_pymerkle(n: int) -> None:
    tree = InmemoryTree(algorithm="sha256")
    for i in range(n):
        tree.append_entry(f"entry {i}".encode())
    ours = merkle.root_of(leaves(n))
    theirs = tree.get_root() if n else hashlib.sha256(b"").digest()
    assert ours == theirs
    frontier = merkle.Frontier()
    for leaf in leaves(n):
        frontier.append(leaf)
    assert frontier.root() == ours
    assert merkle.root_from_nodes(n, fetcher(leaves(n))) == ours


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_inclusion_proofs_verify_and_fail_when_altered(data: st.DataObject) -> None:
    size = data.draw(st.integers(min_value=1, max_value=200))
    index = data.draw(st.integers(min_value=0, max_value=size - 1))
    hashes = leaves(size)
    root = merkle.root_of(hashes)
    proof = merkle.inclusion_proof(index, size, fetcher(hashes))
    assert len(proof) <= size.bit_length()
    assert merkle.verify_inclusion(index, size, hashes[index], proof, root)
    # Any altered hash, proof element, index or size fails.
    bit = data.draw(st.integers(min_value=0, max_value=255))
    assert not merkle.verify_inclusion(index, size, flip(hashes[index], bit), proof, root)
    assert not merkle.verify_inclusion(index, size, hashes[index], proof, flip(root, bit))
    if proof:
        k = data.draw(st.integers(min_value=0, max_value=len(proof) - 1))
        altered = [*proof[:k], flip(proof[k], bit), *proof[k + 1:]]
        assert not merkle.verify_inclusion(index, size, hashes[index], altered, root)
        assert not merkle.verify_inclusion(index, size, hashes[index], proof[:-1], root)
    if size > 1:
        other = (index + 1) % size
        assert not merkle.verify_inclusion(other, size, hashes[index], proof, root)


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_consistency_proofs_verify_and_fail_when_altered(data: st.DataObject) -> None:
    second = data.draw(st.integers(min_value=1, max_value=200))
    first = data.draw(st.integers(min_value=1, max_value=second))
    hashes = leaves(second)
    first_root, second_root = merkle.root_of(hashes[:first]), merkle.root_of(hashes)
    proof = merkle.consistency_proof(first, second, fetcher(hashes))
    assert merkle.verify_consistency(first, second, first_root, second_root, proof)
    bit = data.draw(st.integers(min_value=0, max_value=255))
    if first < second:
        assert not merkle.verify_consistency(first, second, flip(first_root, bit), second_root, proof)
        assert not merkle.verify_consistency(first, second, first_root, flip(second_root, bit), proof)
        k = data.draw(st.integers(min_value=0, max_value=len(proof) - 1))
        altered = [*proof[:k], flip(proof[k], bit), *proof[k + 1:]]
        assert not merkle.verify_consistency(first, second, first_root, second_root, altered)
    # A tree that is not an extension (its first leaves differ) is never proven consistent.
    forged = [merkle.leaf_hash(b"forged"), *hashes[1:]]
    if first < second:
        forged_proof = merkle.consistency_proof(first, second, fetcher(forged))
        assert not merkle.verify_consistency(first, second, first_root, merkle.root_of(forged),
                                             forged_proof)


def test_inclusion_proof_matches_pymerkle_path() -> None:
    tree = InmemoryTree(algorithm="sha256")
    for i in range(23):
        tree.append_entry(f"entry {i}".encode())
    theirs = tree.prove_inclusion(7, 23).serialize()
    ours = merkle.inclusion_proof(6, 23, fetcher(leaves(23)))
    # pymerkle's path lists the leaf and siblings bottom-up; every sibling we produce is in it.
    path = {bytes.fromhex(h) for h in theirs["path"]}
    assert set(ours) <= path
