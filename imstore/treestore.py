"""The Merkle tree of the log, kept in the index database so that proofs cost O(log n) (docs/DESIGN.md P2).

Table `merkle` holds the hash of every perfect subtree of the log's leaves, one
row each, keyed by level << 48 | index; a log of n records holds about 2n rows.
It is derived like the rest of the index: the indexer adds a frame's leaves in
the same transaction as its index rows (`add_frame`), and a table that is
missing, behind or ahead of the index is rebuilt from the log (`catch_up`).
The tree covers the log's records from seq 1 without a gap: a damaged frame
stops it (the records after damage cannot be proven).
"""

from __future__ import annotations

import os
import sqlite3

from . import merkle
from .errors import CorruptIndex, CorruptLog, ImstoreError
from .hashing import blake3
from .log import Log
from .records import Frame

__all__ = ["TreeTable"]

_LEVEL_SHIFT = 48  # a log of 2**48 records is far beyond any store

_SCHEMA = "CREATE TABLE IF NOT EXISTS merkle (id INTEGER PRIMARY KEY, hash BLOB NOT NULL)"


class TreeTable:
    """The tree's nodes in one index database (a merkle.NodeSource)."""

    def __init__(self, db: sqlite3.Connection, log: Log):
        self.db = db
        self.log = log
        self._ready = False

    def _ensure_table(self) -> None:
        if not self._ready:
            self.db.execute(_SCHEMA)
            self._ready = True

    # ------------------------------------------------------------ reading
    def size(self) -> int:
        """How many leaves (records) the tree holds."""
        self._ensure_table()
        row = self.db.execute("SELECT id FROM merkle WHERE id < ? ORDER BY id DESC LIMIT 1", (1 << _LEVEL_SHIFT,)).fetchone()
        return 0 if row is None else row[0] + 1

    def node(self, level: int, index: int) -> bytes:
        row = self.db.execute("SELECT hash FROM merkle WHERE id = ?", ((level << _LEVEL_SHIFT) | index,)).fetchone()
        if row is None or len(row[0]) != merkle.HASH_SIZE:
            raise CorruptIndex(f"the index's Merkle tree lacks node {level}/{index}: run imstore reindex to rebuild it")
        return row[0]

    # ------------------------------------------------------------ writing (inside the index's transaction)
    def append(self, leaf_hashes: list[bytes], size: int | None = None) -> None:
        """Add leaves after the tree's last (size: the tree's size, if the caller just read it)."""
        rows = merkle.new_nodes(self, self.size() if size is None else size, leaf_hashes)
        self.db.executemany("INSERT INTO merkle VALUES (?, ?)", [((level << _LEVEL_SHIFT) | index, hash_) for level, index, hash_ in rows])

    def clear(self) -> None:
        self._ensure_table()
        self.db.execute("DELETE FROM merkle")

    def add_frame(self, frame: Frame, shipped: tuple[bytes, int] | None = None) -> None:
        """Add the leaves of a frame the index just applied (same transaction); a tree that is not right behind it catches up.

        shipped: (bytes, their log offset) holding the frame, when it is not in the log yet (a pull
        stages its index rows before it appends: indexer.stage_shipped).

        Never fails the index update: a frame whose bytes cannot be read back now is
        left for the next catch-up (the tree is derived; the log is the truth).
        """
        first = frame.records[0].seq
        try:
            try:
                self._add_after(first - 1, frame, shipped)
            except CorruptIndex:  # nodes missing from the table: build it again from the log
                self.clear()
                self._add_after(first - 1, frame, shipped)
        except (ImstoreError, OSError, sqlite3.Error):
            self._ready = False  # look for the table again next time (a statement failed alone: the index's rows stand)

    def _add_after(self, seq: int, frame: Frame, shipped: tuple[bytes, int] | None = None) -> None:
        size = self.size()
        if size != seq:
            self.catch_up(seq)
            size = self.size()
        if size == seq:
            self.append(frame_leaf_hashes(self.log, frame, shipped), size)

    def catch_up(self, seq: int) -> None:
        """Make the tree hold the records up to seq, from the log (inside a write transaction).

        Where the index places each frame tells where to read; a gap in seq (damage)
        stops the tree there.
        """
        size = self.size()
        if size > seq:
            self.clear()
            size = 0
        while size < seq:
            row = self.db.execute("SELECT frame_offset FROM versions WHERE seq = ?", (size + 1,)).fetchone()
            if row is None or row[0] is None:
                return  # a gap: the record after the tree's end was lost to damage
            added = 0
            for frame in self.log.scan(row[0], self.log.size()):
                leaves = [(record.seq, digest) for record, digest in zip(frame.records, frame_leaf_hashes(self.log, frame), strict=True)]
                fresh = [digest for record_seq, digest in leaves if size < record_seq <= seq]
                if leaves[0][0] > size + 1 or not fresh:
                    break
                self.append(fresh)
                size += len(fresh)
                added += len(fresh)
                if size >= seq:
                    return
            if not added:
                return


def frame_leaf_hashes(log: Log, frame: Frame, shipped: tuple[bytes, int] | None = None) -> list[bytes]:
    """The leaf hash of each record of a frame: its payload bytes, read back from the log (or from
    shipped: bytes and their log offset) and checked against the record."""
    if not frame.spans:
        raise CorruptLog(f"the frame at offset {frame.offset} has no record places")
    start = frame.spans[0][0]
    end = frame.spans[-1][0] + frame.spans[-1][1]
    if shipped is not None:
        data, base = shipped
        raw = data[start - base : end - base]
    else:
        fd = os.open(log.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            raw = os.pread(fd, end - start, start)
        finally:
            os.close(fd)
    leaves = []
    for record, (offset, length) in zip(frame.records, frame.spans, strict=True):
        payload = raw[offset - start : offset - start + length]
        if blake3(payload).digest() != record.record_hash:
            raise CorruptLog(f"the log changed under record seq {record.seq} while it was read")
        leaves.append(merkle.leaf_hash(payload))
    return leaves
