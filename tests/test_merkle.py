"""The Merkle tree against a recursive reference written from RFC 9162 section 2.1 (Hypothesis)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imstore import merkle
from imstore.errors import ProofFailed
from imstore.hashing import blake3


# ---------------------------------------------------------------- the RFC's definitions, recursively, on raw leaves
def ref_mth(leaves: list[bytes]) -> bytes:
    n = len(leaves)
    if n == 0:
        return blake3(b"").digest()
    if n == 1:
        return blake3(b"\x00" + leaves[0]).digest()
    k = 1
    while k * 2 < n:
        k *= 2
    return blake3(b"\x01" + ref_mth(leaves[:k]) + ref_mth(leaves[k:])).digest()


def ref_path(m: int, leaves: list[bytes]) -> list[bytes]:
    n = len(leaves)
    if n == 1:
        return []
    k = 1
    while k * 2 < n:
        k *= 2
    if m < k:
        return ref_path(m, leaves[:k]) + [ref_mth(leaves[k:])]
    return ref_path(m - k, leaves[k:]) + [ref_mth(leaves[:k])]


def ref_subproof(m: int, leaves: list[bytes], complete: bool) -> list[bytes]:
    n = len(leaves)
    if m == n:
        return [] if complete else [ref_mth(leaves)]
    k = 1
    while k * 2 < n:
        k *= 2
    if m <= k:
        return ref_subproof(m, leaves[:k], complete) + [ref_mth(leaves[k:])]
    return ref_subproof(m - k, leaves[k:], False) + [ref_mth(leaves[:k])]


def make_leaves(count: int, salt: int = 0) -> list[bytes]:
    return [f"record {salt} {number}".encode() * (1 + number % 3) for number in range(count)]


def tree_of(leaves: list[bytes]) -> merkle.MemoryTree:
    return merkle.MemoryTree(merkle.leaf_hash(leaf) for leaf in leaves)


sizes = st.integers(min_value=1, max_value=300)


# ---------------------------------------------------------------- the tree's answers equal the reference
@settings(max_examples=150, deadline=None)
@given(size=st.integers(min_value=0, max_value=300), prefix=st.integers(min_value=0, max_value=300))
def test_every_prefix_root_equals_the_reference_mth(size, prefix):
    leaves = make_leaves(size)
    tree = tree_of(leaves)
    prefix = min(prefix, size)
    assert merkle.root(tree, size) == ref_mth(leaves)
    assert merkle.root(tree, prefix) == ref_mth(leaves[:prefix])


@settings(max_examples=150, deadline=None)
@given(data=st.data(), size=sizes)
def test_inclusion_proofs_equal_the_reference_and_verify(data, size):
    leaves = make_leaves(size, salt=1)
    tree = tree_of(leaves)
    tree_size = data.draw(st.integers(min_value=1, max_value=size))
    index = data.draw(st.integers(min_value=0, max_value=tree_size - 1))
    proof = merkle.inclusion_proof(tree, index, tree_size)
    assert proof == ref_path(index, leaves[:tree_size])
    merkle.verify_inclusion(merkle.leaf_hash(leaves[index]), index, tree_size, proof, ref_mth(leaves[:tree_size]))


@settings(max_examples=150, deadline=None)
@given(data=st.data(), size=sizes)
def test_consistency_proofs_equal_the_reference_and_verify(data, size):
    leaves = make_leaves(size, salt=2)
    tree = tree_of(leaves)
    new = data.draw(st.integers(min_value=1, max_value=size))
    old = data.draw(st.integers(min_value=1, max_value=new))
    proof = merkle.consistency_proof(tree, old, new)
    assert proof == (ref_subproof(old, leaves[:new], True) if old < new else [])
    merkle.verify_consistency(old, new, ref_mth(leaves[:old]), ref_mth(leaves[:new]), proof)


@settings(max_examples=60, deadline=None)
@given(chunks=st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=8))
def test_a_tree_grown_in_batches_equals_one_built_at_once(chunks):
    """A batch frame's records are appended together: the nodes must be those of one leaf at a time."""
    leaves = make_leaves(sum(chunks), salt=3)
    grown = merkle.MemoryTree()
    done = 0
    for count in chunks:
        grown.extend(merkle.leaf_hash(leaf) for leaf in leaves[done : done + count])
        done += count
        assert merkle.root(grown, done) == ref_mth(leaves[:done])
    assert grown.levels == tree_of(leaves).levels


# ---------------------------------------------------------------- wrong proofs are rejected
def flipped(proof: list[bytes]):
    """Every proof that differs from proof in one byte (each byte of each hash, changed by one xor)."""
    for position, digest in enumerate(proof):
        for offset in range(len(digest)):
            for mask in (0x01, 0x80):
                changed = bytearray(digest)
                changed[offset] ^= mask
                yield [*proof[:position], bytes(changed), *proof[position + 1 :]]


@pytest.mark.parametrize("size", [2, 3, 7, 8, 13, 64, 100])
def test_every_single_byte_change_to_an_inclusion_proof_is_rejected(size):
    leaves = make_leaves(size, salt=4)
    tree = tree_of(leaves)
    root = merkle.root(tree, size)
    for index in {0, size // 2, size - 1}:
        proof = merkle.inclusion_proof(tree, index, size)
        leaf = merkle.leaf_hash(leaves[index])
        merkle.verify_inclusion(leaf, index, size, proof, root)
        for bad in flipped(proof):
            with pytest.raises(ProofFailed):
                merkle.verify_inclusion(leaf, index, size, bad, root)
        for bad_index in {index + 1, index - 1} & set(range(size)):
            if merkle.inclusion_proof(tree, bad_index, size) != proof or leaves[bad_index] != leaves[index]:
                with pytest.raises(ProofFailed):
                    merkle.verify_inclusion(leaf, bad_index, size, proof, root)
        with pytest.raises(ProofFailed):
            merkle.verify_inclusion(leaf, index, size, proof[:-1], root)
        with pytest.raises(ProofFailed):
            merkle.verify_inclusion(leaf, index, size, [*proof, root], root)


@pytest.mark.parametrize(("old", "new"), [(1, 2), (3, 7), (4, 8), (6, 8), (7, 100), (64, 100), (99, 100)])
def test_every_single_byte_change_to_a_consistency_proof_is_rejected(old, new):
    leaves = make_leaves(new, salt=5)
    tree = tree_of(leaves)
    old_root, new_root = merkle.root(tree, old), merkle.root(tree, new)
    proof = merkle.consistency_proof(tree, old, new)
    merkle.verify_consistency(old, new, old_root, new_root, proof)
    for bad in flipped(proof):
        with pytest.raises(ProofFailed):
            merkle.verify_consistency(old, new, old_root, new_root, bad)
    # (The sizes are not checked here: RFC 9162's path can fit neighbouring sizes too; the signed checkpoint binds them.)
    with pytest.raises(ProofFailed):
        merkle.verify_consistency(old, new, old_root, new_root, proof[:-1])


def test_a_rewritten_history_fails_consistency_even_with_an_honest_proof_of_the_new_log():
    leaves = make_leaves(20, salt=6)
    old_root = ref_mth(leaves[:10])
    rewritten = leaves[:4] + [b"forged"] + leaves[5:]
    tree = tree_of(rewritten)
    with pytest.raises(ProofFailed, match="rewritten"):
        merkle.verify_consistency(10, 20, old_root, merkle.root(tree, 20), merkle.consistency_proof(tree, 10, 20))


def test_a_smaller_or_forked_tree_of_the_same_size_is_rejected():
    leaves = make_leaves(10, salt=7)
    with pytest.raises(ProofFailed, match="smaller"):
        merkle.verify_consistency(10, 5, ref_mth(leaves), ref_mth(leaves[:5]), [])
    with pytest.raises(ProofFailed, match="fork"):
        merkle.verify_consistency(10, 10, ref_mth(leaves), ref_mth(leaves[:9] + [b"x"]), [])
    merkle.verify_consistency(10, 10, ref_mth(leaves), ref_mth(leaves), [])
    merkle.verify_consistency(0, 10, merkle.EMPTY_ROOT, ref_mth(leaves), [])
