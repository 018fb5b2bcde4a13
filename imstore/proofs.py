"""Proof documents: made from a store, checked with nothing but a verifier key (docs/DESIGN.md P5).

An inclusion proof (`imstore prove KEY`):
    {"checkpoint": "<signed note>", "seq": S, "leaf": "<base64 of the record>", "inclusion": ["<base64 hash>", ...]}
A consistency proof (`imstore prove --since OLD`):
    {"checkpoint": "<new note>", "old": "<old note>", "consistency": ["<base64 hash>", ...]}

Documents are written in one canonical JSON form (compact, ASCII) and a checker
accepts only that form, so that no byte of a document can change unnoticed.
`check_document` trusts nothing it has not checked: the signature first, then
the proof against the signed root, and only then what the leaf says.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, NamedTuple

from . import layout, merkle
from .checkpoint import (
    Checkpoint,
    Signer,
    Verifier,
    b64,
    checkpoint_body,
    open_checkpoint,
    private_key_id,
    sign_note,
    signature_key_id,
    store_origin,
    unb64,
)
from .errors import CorruptIndex, CorruptLog, ProofFailed
from .fsio import atomic_write
from .hashing import blake3
from .indexer import index_query
from .records import Record, decode_record

if TYPE_CHECKING:
    from .store import Store
    from .treestore import TreeTable

__all__ = [
    "Proven", "signer", "checkpoint", "prove", "consistency_from", "prove_since", "verify_since", "check_document", "render", "parse",
]  # fmt: skip

INCLUSION_FIELDS = ("checkpoint", "seq", "leaf", "inclusion")
CONSISTENCY_FIELDS = ("checkpoint", "old", "consistency")


class Proven(NamedTuple):
    """What a checked document proves: a record in a checkpoint's log, or that the log grew from `old`."""

    checkpoint: Checkpoint
    record: Record | None = None
    old: Checkpoint | None = None


# ================================================================ making proofs from a store
def signer(store: Store) -> Signer:
    """The store's checkpoint signing key (node-local; made on first use)."""
    return Signer.load_or_create(store.root / layout.SIGNING_KEY, store_origin(store.store_id))


@contextmanager
def _tree(store: Store) -> Iterator[TreeTable]:
    """The store's tree, caught up with the index, read in one snapshot (one read transaction)."""
    index = store._current_index()
    tree = store.indexer.tree(index)

    def behind() -> bool:
        return tree.size() < index.state().seq

    if index_query(behind):  # an index made before trees were kept, or a frame the hook could not read back

        def catch_up() -> None:
            index.begin()
            try:
                tree.catch_up(index.state().seq)
                index.commit()
            except BaseException:
                index.rollback()
                raise

        index_query(catch_up)
    index_query(lambda: index.db.execute("BEGIN"))
    try:
        yield tree
    finally:
        index.rollback()


def _signed(store: Store, size: int, root: bytes) -> str:
    """The signed checkpoint of (size, root): the one signed last if it is that tree's, else signed now (P9)."""
    body = checkpoint_body(store_origin(store.store_id), size, root)
    cached = _cached_note(store, body)
    if cached is not None:
        return cached
    note = sign_note(body, signer(store))
    try:
        atomic_write(store.root / layout.CHECKPOINT_CACHE, f"{blake3(note.encode()).hexdigest()}\n{note}".encode(), 0o644, durable=False)
    except OSError:
        pass  # a cache: a read-only store signs every time
    return note


def _cached_note(store: Store, body: str) -> str | None:
    """The note signed last, if it is of this very tree and by the current key (Ed25519 is deterministic:
    signing again would give the same bytes). Saves loading the key and `cryptography` in every `prove`."""
    try:
        checksum, _, note = (store.root / layout.CHECKPOINT_CACHE).read_text("utf-8").partition("\n")
        key_text = (store.root / layout.SIGNING_KEY).read_text("ascii")
    except (OSError, UnicodeDecodeError):
        return None
    if not note.startswith(body + "\n") or blake3(note.encode()).hexdigest() != checksum:
        return None
    key_id = private_key_id(key_text)
    return note if key_id is not None and signature_key_id(note) == key_id else None


def checkpoint(store: Store) -> str:
    """A signed checkpoint of the log as it is now."""
    with _tree(store) as tree:
        size = index_query(tree.size)
        root = index_query(lambda: merkle.root(tree, size))
    return _signed(store, size, root)


def prove(store: Store, key: str, version: int | str | None = None, at: int | None = None) -> dict:
    """The inclusion proof document of key's version (the latest, a number, or the one current at `at`)."""
    found = store.resolve(key, version, at)
    payload = _record_payload(store, found.key, found.version, found.seq)
    with _tree(store) as tree:
        size = index_query(tree.size)
        if found.seq > size:
            raise CorruptLog(
                f"{key!r} version {found.version} follows damage in the log (the tree stops at record {size}): it cannot be proven"
            )
        path = index_query(lambda: merkle.inclusion_proof(tree, found.seq - 1, size))
        root = index_query(lambda: merkle.root(tree, size))
    try:
        merkle.verify_inclusion(merkle.leaf_hash(payload), found.seq - 1, size, path, root)
    except ProofFailed:
        raise CorruptIndex("the index's Merkle tree does not match the log: run imstore reindex to rebuild it") from None
    return {"checkpoint": _signed(store, size, root), "seq": found.seq, "leaf": b64(payload), "inclusion": [b64(h) for h in path]}


def _record_payload(store: Store, key: str, version: int, seq: int) -> bytes:
    """The record's payload bytes, read from the log where the index places it, and checked to be that record."""
    span = index_query(lambda: store.index.record_span(key, version))
    if span is None:
        raise CorruptIndex(f"the index has no place in the log for {key!r} version {version}: run imstore reindex")
    _frame_offset, offset, length = span
    fd = os.open(store.log.path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        payload = os.pread(fd, length, offset)
    finally:
        os.close(fd)
    try:
        record = decode_record(payload)
    except CorruptLog:
        raise CorruptLog(f"the log record of {key!r} version {version} (offset {offset}) is damaged") from None
    if (record.key, record.version, record.seq) != (key, version, seq):
        raise CorruptIndex(f"the index does not match the log for {key!r} version {version}: run imstore reindex")
    return payload


def consistency_from(store: Store, old_size: int) -> dict:
    """A signed checkpoint now and the consistency proof from the tree of old_size records to it (GET /v1/proofs/consistency).

    ProofFailed when the log now holds fewer records than old_size (cut or rolled back).
    """
    with _tree(store) as tree:
        size = index_query(tree.size)
        if old_size > size:
            raise ProofFailed(f"the store's log holds {size} records, fewer than the {old_size} of the old checkpoint:"
                              " history was cut or rolled back")  # fmt: skip
        path = index_query(lambda: merkle.consistency_proof(tree, old_size, size))
        root = index_query(lambda: merkle.root(tree, size))
    return {"checkpoint": _signed(store, size, root), "from": old_size, "consistency": [b64(h) for h in path]}


def prove_since(store: Store, old_note: str, verifier: Verifier | None = None) -> dict:
    """The consistency proof document from an old checkpoint (checked with verifier, else the store's key) to now.

    ProofFailed when the store's log does not extend the old checkpoint (cut, rolled back or rewritten):
    the proof is checked before it is handed out.
    """
    verifier = verifier or signer(store).verifier
    old = open_checkpoint(old_note, verifier)
    origin = store_origin(store.store_id)
    if old.origin != origin:
        raise ProofFailed(f"the old checkpoint is of another log ({old.origin}, this store is {origin})")
    answer = consistency_from(store, old.size)
    document = {"checkpoint": answer["checkpoint"], "old": old_note, "consistency": answer["consistency"]}
    check_document(render(document), verifier)
    return document


def verify_since(store: Store, old_note: str, verifier: Verifier | None = None) -> Proven:
    """Does the store's log still extend the old checkpoint? ProofFailed if not."""
    verifier = verifier or signer(store).verifier
    return check_document(render(prove_since(store, old_note, verifier)), verifier)


# ================================================================ documents
def render(document: dict) -> str:
    """A proof document in its one canonical form (what `check_document` accepts), with a final newline."""
    return json.dumps(document, separators=(",", ":"), ensure_ascii=True) + "\n"


def parse(text: str) -> dict:
    """A proof document's fields, if text is one in canonical form; ProofFailed saying what is wrong."""
    try:
        document = json.loads(text)
    except ValueError:
        raise ProofFailed("the proof document is not JSON") from None
    if not isinstance(document, dict):
        raise ProofFailed("the proof document is not a JSON object")
    if text not in (render(document), render(document)[:-1]):
        raise ProofFailed("the proof document is not in its canonical form (compact JSON, as imstore prove writes it)")
    if set(document) not in (set(INCLUSION_FIELDS), set(CONSISTENCY_FIELDS)):
        expected = f"{list(INCLUSION_FIELDS)} or {list(CONSISTENCY_FIELDS)}"
        raise ProofFailed(f"the proof document has fields {sorted(document)}; expected {expected}")
    return document


def check_document(text: str, verifier: Verifier) -> Proven:
    """Check a proof document offline: the signature, then the proof against the signed root. ProofFailed if anything fails."""
    document = parse(text)
    if not isinstance(document["checkpoint"], str):
        raise ProofFailed("the document's checkpoint is not a string")
    signed = open_checkpoint(document["checkpoint"], verifier)
    if "seq" in document:
        return _check_inclusion(document, signed)
    return _check_consistency(document, signed, verifier)


def _hashes(values: object, what: str) -> list[bytes]:
    if not isinstance(values, list) or not all(isinstance(value, str) for value in values):
        raise ProofFailed(f"the {what} proof is not a list of base64 hashes")
    return [unb64(value, f"a hash of the {what} proof") for value in values]


def _check_inclusion(document: dict, signed: Checkpoint) -> Proven:
    seq = document["seq"]
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
        raise ProofFailed("the document's seq is not a record number")
    if not isinstance(document["leaf"], str):
        raise ProofFailed("the document's leaf is not base64")
    payload = unb64(document["leaf"], "the leaf")
    merkle.verify_inclusion(merkle.leaf_hash(payload), seq - 1, signed.size, _hashes(document["inclusion"], "inclusion"), signed.root)
    try:
        record = decode_record(payload)
    except CorruptLog:
        raise ProofFailed("the proven leaf is not an imstore record") from None
    if record.seq != seq:
        raise ProofFailed(f"the proven record says seq {record.seq}, the document {seq}")
    return Proven(signed, record=record)


def _check_consistency(document: dict, signed: Checkpoint, verifier: Verifier) -> Proven:
    if not isinstance(document["old"], str):
        raise ProofFailed("the document's old checkpoint is not a string")
    old = open_checkpoint(document["old"], verifier)
    if old.origin != signed.origin:
        raise ProofFailed(f"the two checkpoints are of different logs ({old.origin}, {signed.origin})")
    merkle.verify_consistency(old.size, signed.size, old.root, signed.root, _hashes(document["consistency"], "consistency"))
    return Proven(signed, old=old)
