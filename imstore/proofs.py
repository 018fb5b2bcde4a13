"""Proof documents made from a store (docs/DESIGN.md P5); proofcheck.py checks them with nothing but a verifier key.

An inclusion proof (`imstore prove KEY`):
    {"checkpoint": "<signed note>", "seq": S, "leaf": "<base64 of the record>", "inclusion": ["<base64 hash>", ...]}
A consistency proof (`imstore prove --since OLD`):
    {"checkpoint": "<new note>", "old": "<old note>", "consistency": ["<base64 hash>", ...]}

Documents are written in one canonical JSON form (compact, ASCII); a checker
reads any JSON spelling of one, since the formatting carries nothing (P5).
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import TYPE_CHECKING, TypeVar

from . import layout, merkle
from .errors import CorruptIndex, CorruptLog, ImstoreError, InvalidInput, ProofFailed, from_os_error
from .fsio import atomic_write
from .hashing import blake3
from .index import Index
from .indexer import index_query
from .notes import b64, checkpoint_body, private_key_id, signature_key_id, store_origin
from .records import Record, decode_record
from .treestore import STRIDE, TreeTable
from .validate import parse_version

if TYPE_CHECKING:
    from pathlib import Path

    from .checkpoint import Signer, Verifier
    from .proofcheck import Proven
    from .store import Store
    from .treestore import TreeView

T = TypeVar("T")

__all__ = ["signer", "tree_head", "checkpoint", "prove", "consistency_from", "prove_since", "verify_since", "render"]


# ================================================================ making proofs from a store
def signer(store: Store) -> Signer:
    """The store's checkpoint signing key (node-local; made on first use)."""
    from .checkpoint import Signer  # here: a prove answered with the cached checkpoint (P9) needs no key

    return Signer.load_or_create(store.root / layout.SIGNING_KEY, store_origin(store.store_id))


class _ReadOnlyIndex(Index):
    """The index opened read-only (SQLite mode=ro) for one proof (P10): it makes no -wal/-shm files where
    they are (a read-write connection makes them, and deletes them at its close) and never checkpoints."""

    def __init__(self, path: Path):
        import urllib.parse  # loaded by the CLI already

        self.path = path
        uri = "file:" + urllib.parse.quote(str(path)) + "?mode=ro"
        self.db = sqlite3.connect(uri, uri=True, timeout=30, isolation_level=None, check_same_thread=False)
        try:
            self._check_schema(self.db)
        except BaseException:
            self.db.close()
            raise


@contextmanager
def _proving_index(store: Store) -> Iterator[Index]:
    """The index to prove from: the Store's own once it is open (a server's worker); in a process that has
    not opened it (the CLI), the index opened read-only when it is current with the log, else the Store's own."""
    reader = None
    if store._index is None and store.offline_reason is None:
        try:
            reader = _ReadOnlyIndex(store.index_path)
            state = reader.state()
            if state.log_end != store.log.size() or not store.indexer._matches_log(state):
                reader.close()
                reader = None
        except (sqlite3.Error, ImstoreError, OSError):  # the Store's own way of opening says what is wrong, if anything
            if reader is not None:
                reader.close()
            reader = None
    try:
        yield reader if reader is not None else store._current_index()
    finally:
        if reader is not None:
            reader.close()


@contextmanager
def _tree(store: Store, index: Index, rebuild: bool = False) -> Iterator[TreeView]:
    """The store's tree as the index has it now, read in one snapshot (one read transaction).

    The table is caught up first (a write, in the Store's own index) when it is far behind
    the index or ahead of it: an index made before trees were kept, or frames the hook could
    not add; rebuild: made again.
    """
    table = TreeTable(index.db, store.log) if isinstance(index, _ReadOnlyIndex) else store.indexer.tree(index)
    while True:
        index_query(partial(index.db.execute, "BEGIN"))
        try:
            state, stored = index_query(index.state), index_query(table.stored)
            if not rebuild and stored.log_end <= state.log_end and state.seq - stored.size < 2 * STRIDE:
                yield index_query(partial(table.view, state.log_end, stored))
                return
        finally:
            index.rollback()
        if isinstance(index, _ReadOnlyIndex):  # writing takes the Store's own index
            index = store._current_index()
            table = store.indexer.tree(index)
        index_query(partial(_catch_up, index, table, rebuild))
        rebuild = False


def _catch_up(index: Index, table: TreeTable, rebuild: bool) -> None:
    state = index.begin()
    try:
        if rebuild:
            table.clear()
        table.catch_up(state.log_end)
        index.commit()
    except BaseException:
        index.rollback()
        raise


def _on_tree(store: Store, index: Index, compute: Callable[[TreeView], T]) -> T:
    """compute(tree) on the store's tree; a table that lacks nodes or does not fit the log is rebuilt once from the log.

    The nodes compute reads are fetched first in one query (TreeView.prefetch).
    """
    try:
        with _tree(store, index) as tree:
            return index_query(lambda: compute(tree.prefetch(compute)))
    except CorruptIndex:
        with _tree(store, index, rebuild=True) as tree:
            return index_query(lambda: compute(tree.prefetch(compute)))


def _signed(store: Store, size: int, root: bytes) -> str:
    """The signed checkpoint of (size, root): the one signed last if it is that tree's, else signed now (P9)."""
    body = checkpoint_body(store_origin(store.store_id), size, root)
    cached = _cached_note(store, body)
    if cached is not None:
        return cached
    from .checkpoint import sign_note

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
        key_text = (store.root / layout.SIGNING_KEY).read_bytes().decode("ascii")  # not read_text: its codec lookup costs an import
    except (OSError, UnicodeDecodeError):
        return None
    if not note.startswith(body + "\n") or blake3(note.encode()).hexdigest() != checksum:
        return None
    key_id = private_key_id(key_text)
    return note if key_id is not None and signature_key_id(note) == key_id else None


def tree_head(store: Store) -> tuple[int, bytes]:
    """(size, root hash) of the store's tree now: what a checkpoint signs."""
    with _proving_index(store) as index:
        return _on_tree(store, index, lambda tree: (tree.size, merkle.root(tree, tree.size)))


def checkpoint(store: Store) -> str:
    """A signed checkpoint of the log as it is now."""
    return _signed(store, *tree_head(store))


def prove(store: Store, key: str, version: int | str | None = None, at: int | None = None) -> dict:
    """The inclusion proof document of key's version (the latest, a number, or the one current at `at`)."""
    def proof(tree: TreeView) -> tuple[int, list[bytes], bytes]:
        if seq > tree.size:
            raise CorruptLog(
                f"{key!r} version {number} follows damage in the log (the tree stops at record {tree.size}): it cannot be proven"
            )
        return tree.size, merkle.inclusion_proof(tree, seq - 1, tree.size), merkle.root(tree, tree.size)

    with _proving_index(store) as index:
        payload, seq, number = _located(store, index, key, version, at)
        size, path, root = _on_tree(store, index, proof)
    try:
        merkle.verify_inclusion(merkle.leaf_hash(payload), seq - 1, size, path, root)
    except ProofFailed:
        raise CorruptIndex("the index's Merkle tree does not match the log: run imstore reindex to rebuild it") from None
    return {"checkpoint": _signed(store, size, root), "seq": seq, "leaf": b64(payload), "inclusion": [b64(h) for h in path]}


def _located(store: Store, index: Index, key: str, version: int | str | None, at: int | None) -> tuple[bytes, int, int]:
    """(payload, seq, version number) of the version asked for, its bytes read from the log where the index places them.

    A numbered or latest version is looked up in the index alone (a proof is made from the
    index and the log: the read cache is never opened); anything unusual (no such version,
    a deletion, --at, damage in the log) is left to Store.resolve, which says what it is.
    """
    span = None
    if at is None and (version is not None or not index_query(index.damaged)):
        try:
            number = parse_version(version) if version is not None else None
        except InvalidInput:
            number = 0  # Store.resolve says why
        if number is None:
            found_row = index_query(lambda: index.latest_row(key))
            if found_row is not None and found_row[0][3] == "put":
                number, span = found_row[0][1], found_row[1]
        elif number:
            span = index_query(lambda: index.record_span(key, number))
    if span is not None:
        record, payload = _record_at(store, span)
        if (record.key, record.version, record.op) == (key, number, "put"):
            return payload, record.seq, number
    found = store.resolve(key, version, at)  # raises KeyNotFound, KeyDeleted, ... as a read would
    span = index_query(lambda: index.record_span(found.key, found.version))
    if span is None:
        raise CorruptIndex(f"the index has no place in the log for {key!r} version {found.version}: run imstore reindex")
    record, payload = _record_at(store, span)
    if (record.key, record.version, record.seq) != (found.key, found.version, found.seq):
        raise CorruptIndex(f"the index does not match the log for {key!r} version {found.version}: run imstore reindex")
    return payload, record.seq, found.version


def _record_at(store: Store, span: tuple[int, int, int]) -> tuple[Record, bytes]:
    """The record whose payload the index places at span, and its bytes, read from the log."""
    _frame_offset, offset, length = span
    try:
        fd = os.open(store.log.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            payload = os.pread(fd, length, offset)
        finally:
            os.close(fd)
    except OSError as exc:
        raise from_os_error(exc, "reading the log") from None
    try:
        return decode_record(payload), payload
    except CorruptLog:
        raise CorruptLog(f"the log record at offset {offset} is damaged") from None


def consistency_from(store: Store, old_size: int) -> dict:
    """A signed checkpoint now and the consistency proof from the tree of old_size records to it (GET /v1/proofs/consistency).

    ProofFailed when the log now holds fewer records than old_size (cut or rolled back).
    """

    def proof(tree: TreeView) -> tuple[int, list[bytes], bytes]:
        if old_size > tree.size:
            raise ProofFailed(f"the store's log holds {tree.size} records, fewer than the {old_size} of the old checkpoint:"
                              " history was cut or rolled back")  # fmt: skip
        return tree.size, merkle.consistency_proof(tree, old_size, tree.size), merkle.root(tree, tree.size)

    with _proving_index(store) as index:
        size, path, root = _on_tree(store, index, proof)
    return {"checkpoint": _signed(store, size, root), "from": old_size, "consistency": [b64(h) for h in path]}


def prove_since(store: Store, old_note: str, verifier: Verifier | None = None) -> dict:
    """The consistency proof document from an old checkpoint (checked with verifier, else the store's key) to now.

    ProofFailed when the store's log does not extend the old checkpoint (cut, rolled back or rewritten):
    the proof is checked before it is handed out.
    """
    from .checkpoint import open_checkpoint

    verifier = verifier or signer(store).verifier
    old = open_checkpoint(old_note, verifier)
    origin = store_origin(store.store_id)
    if old.origin != origin:
        raise ProofFailed(f"the old checkpoint is of another log ({old.origin}, this store is {origin})")
    answer = consistency_from(store, old.size)
    document = {"checkpoint": answer["checkpoint"], "old": old_note, "consistency": answer["consistency"]}
    from .proofcheck import check_document  # only here: a plain `prove` checks its proof with merkle alone

    check_document(render(document), verifier)
    return document


def verify_since(store: Store, old_note: str, verifier: Verifier | None = None) -> Proven:
    """Does the store's log still extend the old checkpoint? ProofFailed if not."""
    from .proofcheck import check_document

    verifier = verifier or signer(store).verifier
    return check_document(render(prove_since(store, old_note, verifier)), verifier)


# ================================================================ documents
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b", "\f": "\\f"}


def _quote(text: str) -> str:
    """text as a JSON string, ASCII only, exactly as json.dumps writes it (written here: importing json costs ~1 ms)."""
    if text.isascii() and text.isprintable() and '"' not in text and "\\" not in text:
        return f'"{text}"'
    out = []
    for char in text:
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif " " <= char <= "~":
            out.append(char)
        elif ord(char) > 0xFFFF:  # a UTF-16 surrogate pair, as JSON spells characters beyond the BMP
            code = ord(char) - 0x10000
            out.append(f"\\u{0xD800 | code >> 10:04x}\\u{0xDC00 | code & 0x3FF:04x}")
        else:
            out.append(f"\\u{ord(char):04x}")
    return '"' + "".join(out) + '"'


def render(document: dict) -> str:
    """A proof document in its canonical form, with a final newline: compact JSON, ASCII only.

    Exactly json.dumps(document, separators=(",", ":"), ensure_ascii=True); the proof
    documents' values (strings, numbers, lists of strings) are written here directly.
    """
    parts = []
    for name, value in document.items():
        text = _json_value(value) if type(name) is str else None
        if text is None:  # not a proof document's kind of field: json writes it
            import json

            return json.dumps(document, separators=(",", ":"), ensure_ascii=True) + "\n"
        parts.append(_quote(name) + ":" + text)
    return "{" + ",".join(parts) + "}\n"


def _json_value(value: object) -> str | None:
    if type(value) is str:
        return _quote(value)
    if type(value) is int:
        return int.__repr__(value)
    if type(value) is list and all(type(item) is str for item in value):
        return "[" + ",".join(map(_quote, value)) + "]"
    return None
