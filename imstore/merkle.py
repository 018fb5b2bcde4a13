"""The RFC 9162 Merkle tree over the log, with BLAKE3-256 in place of SHA-256 (docs/DESIGN.md P1).

Pure code, no files. One leaf per log record (leaf index = seq - 1), the leaf's
bytes being the record's encoded payload. Hashes (RFC 9162 section 2.1.1):

    leaf hash  = BLAKE3(0x00 || leaf)
    node hash  = BLAKE3(0x01 || left || right)
    empty tree = BLAKE3()

Proofs are built from the hashes of *perfect* subtrees, node(level, index) =
MTH of leaves [index * 2**level, (index + 1) * 2**level), which a NodeSource
supplies (the tree kept in the index, treestore.py, or a MemoryTree). Any
subtree the RFC's recursion visits is at most one perfect subtree per level,
so a proof costs O(log n) node reads. The verification functions are RFC 9162
sections 2.1.3.2 and 2.1.4.2 written from the text, and need nothing but the
proof: a client checks with them and trusts nothing else.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from .errors import ProofFailed
from .hashing import blake3

__all__ = [
    "HASH_SIZE", "EMPTY_ROOT", "leaf_hash", "node_hash", "MemoryTree", "new_nodes",
    "root", "subtree_hash", "inclusion_proof", "consistency_proof", "verify_inclusion", "verify_consistency",
]  # fmt: skip

HASH_SIZE = 32
EMPTY_ROOT = blake3(b"").digest()


def leaf_hash(leaf: bytes) -> bytes:
    return blake3(b"\x00" + leaf).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return blake3(b"\x01" + left + right).digest()


def _split(size: int) -> int:
    """The largest power of two smaller than size (size > 1): where RFC 9162 splits a tree of size leaves."""
    return 1 << ((size - 1).bit_length() - 1)


if TYPE_CHECKING:  # a Protocol class costs start-up time, and only type checkers read it
    from typing import Protocol

    class NodeSource(Protocol):
        def node(self, level: int, index: int) -> bytes:
            """The hash of the perfect subtree of 2**level leaves starting at leaf index * 2**level."""
            ...


def new_nodes(source: NodeSource, size: int, leaf_hashes: Iterable[bytes]) -> list[tuple[int, int, bytes]]:
    """The (level, index, hash) of every perfect subtree completed by appending leaf_hashes to a tree of size leaves.

    Each new leaf closes the subtrees whose last leaf it is: one per trailing 1-bit
    of its index. Left siblings come from the rows made here, or from source.
    """
    made: dict[tuple[int, int], bytes] = {}
    rows = []
    for number, digest in enumerate(leaf_hashes):
        index, level = size + number, 0
        rows.append((0, index, digest))
        made[(0, index)] = digest
        while index & 1:
            left = made.get((level, index - 1)) or source.node(level, index - 1)
            digest = node_hash(left, digest)
            level, index = level + 1, index >> 1
            rows.append((level, index, digest))
            made[(level, index)] = digest
    return rows


class MemoryTree:
    """A tree held in lists, one per level (tests, benchmarks, and a client that builds a tree of its own)."""

    def __init__(self, leaf_hashes: Iterable[bytes] = ()):
        self.levels: list[list[bytes]] = [[]]
        self.extend(leaf_hashes)

    @property
    def size(self) -> int:
        return len(self.levels[0])

    def node(self, level: int, index: int) -> bytes:
        return self.levels[level][index]

    def extend(self, leaf_hashes: Iterable[bytes]) -> None:
        for level, _index, digest in new_nodes(self, self.size, leaf_hashes):
            while len(self.levels) <= level:
                self.levels.append([])
            self.levels[level].append(digest)  # new_nodes makes each level's nodes in index order


def subtree_hash(source: NodeSource, start: int, end: int) -> bytes:
    """MTH(D[start:end]) for a subtree the RFC's recursion visits (start is a multiple of a power of two >= end - start).

    The left part of each split is perfect and read in one lookup; only the right
    part recurses, so this is at most one lookup per level.
    """
    if end <= start:
        return EMPTY_ROOT
    size = end - start
    if size & (size - 1) == 0 and start % size == 0:
        level = size.bit_length() - 1
        return source.node(level, start >> level)
    k = _split(size)
    return node_hash(subtree_hash(source, start, start + k), subtree_hash(source, start + k, end))


def root(source: NodeSource, size: int) -> bytes:
    """MTH of the first size leaves (the empty tree's hash for 0)."""
    return subtree_hash(source, 0, size)


def inclusion_proof(source: NodeSource, index: int, size: int) -> list[bytes]:
    """PATH(index, D[0:size]) of RFC 9162 section 2.1.3.1, the hash nearest the leaf first."""
    if not 0 <= index < size:
        raise ValueError(f"leaf {index} is not in a tree of {size} leaves")
    path: list[bytes] = []
    start, end = 0, size
    while end - start > 1:
        k = _split(end - start)
        if index < start + k:
            path.append(subtree_hash(source, start + k, end))
            end = start + k
        else:
            path.append(subtree_hash(source, start, start + k))
            start += k
    path.reverse()  # the recursion appends on the way back up: the deepest sibling comes first
    return path


def consistency_proof(source: NodeSource, old_size: int, new_size: int) -> list[bytes]:
    """PROOF(old_size, D[0:new_size]) of RFC 9162 section 2.1.4.1; empty when old_size is 0 or new_size."""
    if not 0 <= old_size <= new_size:
        raise ValueError(f"no consistency proof from {old_size} leaves to {new_size}")
    if old_size in (0, new_size):
        return []
    path: list[bytes] = []
    start, end, m, complete = 0, new_size, old_size, True
    while m != end - start:
        k = _split(end - start)
        if m <= k:
            path.append(subtree_hash(source, start + k, end))
            end = start + k
        else:
            path.append(subtree_hash(source, start, start + k))
            start, m, complete = start + k, m - k, False
    if not complete:
        path.append(subtree_hash(source, start, end))  # SUBPROOF(m, D[m], false) = {MTH(D[m])}
    path.reverse()
    return path


def _check_hashes(proof: Sequence[bytes], what: str) -> None:
    if any(not isinstance(digest, bytes) or len(digest) != HASH_SIZE for digest in proof):
        raise ProofFailed(f"the {what} proof holds a value that is not a {HASH_SIZE}-byte hash")


def verify_inclusion(leaf_digest: bytes, index: int, size: int, proof: Sequence[bytes], root_hash: bytes) -> None:
    """RFC 9162 section 2.1.3.2: does proof place the leaf with hash leaf_digest at index in the tree with root_hash?

    Raises ProofFailed saying why not.
    """
    _check_hashes(proof, "inclusion")
    if not 0 <= index < size:
        raise ProofFailed(f"the inclusion proof's leaf index {index} is not inside the tree of {size} leaves")
    fn, sn = index, size - 1
    r = leaf_digest
    for p in proof:
        if sn == 0:
            raise ProofFailed("the inclusion proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise ProofFailed("the inclusion proof is shorter than the tree is deep")
    if r != root_hash:
        raise ProofFailed("the inclusion proof does not lead to the checkpoint's root hash")


def verify_consistency(old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]) -> None:
    """RFC 9162 section 2.1.4.2: is the tree (new_size, new_root) an extension of (old_size, old_root)?

    The RFC covers 0 < old_size < new_size. Equal sizes need an empty proof and the
    same root; an old empty tree (any tree extends it) an empty proof and the empty
    tree's root. Raises ProofFailed saying why not.
    """
    _check_hashes(proof, "consistency")
    if old_size > new_size:
        raise ProofFailed(f"the new tree ({new_size} leaves) is smaller than the old one ({old_size}): history was cut or rolled back")
    if old_size == 0 or old_size == new_size:
        if proof:
            raise ProofFailed("the consistency proof should be empty for these tree sizes")
        if old_size == 0 and old_root != EMPTY_ROOT:
            raise ProofFailed("the old checkpoint claims an empty tree with a root that is not the empty tree's")
        if old_size == new_size and old_root != new_root:
            raise ProofFailed(f"two different roots for the same tree size {new_size}: the log was rewritten (a fork)")
        return
    path = list(proof)
    if not path:
        raise ProofFailed("the consistency proof is empty")
    if old_size & (old_size - 1) == 0:
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofFailed("the consistency proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise ProofFailed("the consistency proof is shorter than the tree is deep")
    if fr != old_root:
        raise ProofFailed("the consistency proof does not lead to the old checkpoint's root: the log was rewritten")
    if sr != new_root:
        raise ProofFailed(
            "the consistency proof does not lead to the new checkpoint's root: the new log does not extend the old"
            " one (history was rewritten, or the proof is forged)"
        )
