"""The Merkle tree of the log, kept in the index database so that proofs cost O(log n) (docs/DESIGN.md P2).

Table `merkle` holds the hash of every perfect subtree of the first `size`
leaves, one row each, keyed by level << 48 | index (about 2 rows per record);
table `merkle_end` says where that prefix ends: its size, the log offset after
its last record's frame, and that record's chain hash. The table is written
only when a frame crosses a multiple of STRIDE records, in the index's
transaction (`add_frame`); the fewer than STRIDE records after it are read
from the log when a proof is made (`view`). Like the rest of the index it is
derived: a table that is missing, ahead of the index, or does not continue
into the log is rebuilt from the log (`catch_up`). The tree covers the log's
records from seq 1 without a gap: a damaged frame stops it (the records after
damage cannot be proven).
"""

from __future__ import annotations

import os
import sqlite3
from collections import namedtuple
from collections.abc import Callable

from . import merkle
from .errors import CorruptIndex, CorruptLog, ImstoreError, from_os_error
from .hashing import blake3
from .log import Log
from .records import GENESIS, HEADER_SIZE, Frame

__all__ = ["TreeTable", "TreeView", "Stored", "STRIDE"]

STRIDE = 16  # records between writes of the table: a put pays ~1/STRIDE of a write, a proof reads < STRIDE records
CATCH_UP_BATCH = 1 << 16  # leaves a catch-up holds in memory at once
_LEVEL_SHIFT = 48  # a log of 2**48 records is far beyond any store
_LEAVES_END = 1 << _LEVEL_SHIFT  # ids below it are leaves (level 0)

_TABLES = (
    "CREATE TABLE IF NOT EXISTS merkle (id INTEGER PRIMARY KEY, hash BLOB NOT NULL)",
    "CREATE TABLE IF NOT EXISTS merkle_end (id INTEGER PRIMARY KEY CHECK (id = 1), size INTEGER NOT NULL,"
    " log_end INTEGER NOT NULL, last_hash BLOB NOT NULL)",
)


class Stored(namedtuple("Stored", "size log_end last_hash")):
    """Where a tree prefix ends: `size` records, the last one's frame ending at `log_end`, its chain hash `last_hash`.

    (collections.namedtuple, not typing.NamedTuple: cheaper at start-up, which `imstore prove` pays.)
    """

    __slots__ = ()


EMPTY = Stored(0, 0, GENESIS)


class TreeTable:
    """The tree's stored nodes in one index database (a merkle.NodeSource for the stored prefix)."""

    def __init__(self, db: sqlite3.Connection, log: Log):
        self.db = db
        self.log = log
        # The records of the frames this process applied since the table was written, each as
        # (seq, prev, record hash, leaf hash, the frame's end if it is the frame's last record else 0).
        self._pending: list[tuple[int, bytes, bytes, bytes, int]] = []

    def _ensure_tables(self) -> None:
        """Create the tables if need be: only in a write transaction (one rolled back takes them away again)."""
        for statement in _TABLES:
            self.db.execute(statement)

    # ------------------------------------------------------------ reading
    def stored(self) -> Stored:
        """The prefix the table holds; EMPTY when it holds none, or not what its marker says (rebuilt on the next catch-up)."""
        try:
            row = self.db.execute("SELECT size, log_end, last_hash FROM merkle_end WHERE id = 1").fetchone()
            if row is None:
                return EMPTY
            leaves = self.db.execute("SELECT max(id) FROM merkle WHERE id < ?", (_LEAVES_END,)).fetchone()[0]
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return EMPTY  # an index made before trees were kept (or tables dropped): made at the next write
            raise
        if (-1 if leaves is None else leaves) + 1 != row[0]:
            return EMPTY  # a table cut short or made by an older imstore: not trusted
        return Stored(*row)

    def node(self, level: int, index: int) -> bytes:
        try:
            row = self.db.execute("SELECT hash FROM merkle WHERE id = ?", ((level << _LEVEL_SHIFT) | index,)).fetchone()
        except sqlite3.OperationalError as exc:
            if "no such table" not in str(exc):
                raise
            row = None
        if row is None or len(row[0]) != merkle.HASH_SIZE:
            raise CorruptIndex(f"the index's Merkle tree lacks node {level}/{index}: run imstore reindex to rebuild it")
        return row[0]

    def view(self, log_end: int, stored: Stored | None = None) -> TreeView:
        """The tree of the log up to log_end (a frame end the index applied): the table, then the records after it from the log.

        stored: what stored() just said (in this transaction). CorruptIndex when the table is ahead
        of log_end or does not continue into the log (catch_up rebuilds it).
        """
        stored = stored or self.stored()
        if stored.log_end > log_end:
            raise CorruptIndex("the index's Merkle tree is ahead of the index: run imstore reindex")
        leaves, _end = self._leaves_from_log(stored, log_end)
        return TreeView(self, stored.size, leaves)

    # ------------------------------------------------------------ writing (inside the index's transaction)
    def append(self, leaf_hashes: list[bytes], end: Stored, stored: Stored) -> None:
        """Add leaves after the prefix `stored`; the table's prefix then ends at `end`."""
        if not stored.size:
            self._ensure_tables()
        rows = merkle.new_nodes(self, stored.size, leaf_hashes)
        self.db.executemany("INSERT INTO merkle VALUES (?, ?)", [((level << _LEVEL_SHIFT) | index, hash_) for level, index, hash_ in rows])
        self.db.execute("INSERT OR REPLACE INTO merkle_end VALUES (1, ?, ?, ?)", end)

    def clear(self) -> None:
        self._ensure_tables()
        self.db.execute("DELETE FROM merkle")
        self.db.execute("DELETE FROM merkle_end")

    def add_frame(self, frame: Frame, payload: bytes | None = None) -> None:
        """A frame the index just applied (same transaction); payload: its bytes, when the caller has them in memory.

        The table is written only when the frame crosses a multiple of STRIDE records,
        from the leaves remembered here (or read back from the log). Never fails the
        index update: the tree is derived, and a write that fails now is made later.
        """
        first, last = frame.records[0].seq, frame.records[-1].seq
        try:
            if payload is not None:
                self._remember(frame, payload)
            if (first - 1) // STRIDE != last // STRIDE:
                try:
                    self.catch_up(frame.end)
                except CorruptIndex:  # nodes missing from the table: build it again from the log
                    self.clear()
                    self.catch_up(frame.end)
        except (ImstoreError, OSError, sqlite3.Error):
            self._pending.clear()  # a statement failed alone: the index's rows stand, the tree catches up later

    def _remember(self, frame: Frame, payload: bytes) -> None:
        start = frame.offset + HEADER_SIZE
        if len(self._pending) > 4 * STRIDE:
            del self._pending[: -2 * STRIDE]  # not written for a while (another process writes the table): keep the newest
        for number, (record, (offset, length)) in enumerate(zip(frame.records, frame.spans, strict=True)):
            leaf = payload[offset - start : offset - start + length]
            if blake3(leaf).digest() != record.record_hash:
                raise CorruptLog(f"the payload given for record seq {record.seq} is not the record's")
            last = number == len(frame.records) - 1
            self._pending.append((record.seq, record.prev, record.record_hash, merkle.leaf_hash(leaf), frame.end if last else 0))

    def catch_up(self, log_end: int) -> None:
        """Make the table hold the log's records up to log_end, a frame end the index applied (inside a write transaction)."""
        stored = self.stored()
        if stored.size == 0 or stored.log_end > log_end:
            self.clear()
            stored = EMPTY
        found = self._leaves_from_memory(stored, log_end)
        self._pending.clear()
        if found is not None:
            self.append(*found, stored)
            return
        while stored.log_end < log_end:  # from the log, a bounded batch at a time
            try:
                leaves, end = self._leaves_from_log(stored, log_end, CATCH_UP_BATCH)
            except CorruptIndex:  # the table does not continue into the log: start over (EMPTY always fits)
                self.clear()
                stored = EMPTY
                continue
            if not leaves:
                return  # damage or a gap in the chain: the tree stops here
            self.append(leaves, end, stored)
            stored = end

    def _leaves_from_memory(self, stored: Stored, log_end: int) -> tuple[list[bytes], Stored] | None:
        """The leaves after stored up to log_end from the frames this process applied, if it remembers all of them."""
        pending = self._pending
        follows = (number for number, entry in enumerate(pending) if entry[:2] == (stored.size + 1, stored.last_hash))
        start = next(follows, None)
        if start is None:
            return None
        leaves, seq, prev = [], stored.size, stored.last_hash
        for record_seq, record_prev, record_hash, leaf, frame_end in pending[start:]:
            if record_seq != seq + 1 or record_prev != prev:
                return None
            leaves.append(leaf)
            seq, prev = record_seq, record_hash
            if frame_end == log_end:
                return leaves, Stored(seq, log_end, prev)
        return None

    def _leaves_from_log(self, stored: Stored, log_end: int, limit: int | None = None) -> tuple[list[bytes], Stored]:
        """The leaves of the records after stored, read from the log up to log_end (or the first frame end
        after `limit` leaves); they stop at damage.

        Each record must continue the chain from stored's last one (else CorruptIndex: the
        table is not of this log), and its bytes are checked against the record's hash.
        """
        leaves: list[bytes] = []
        end = stored
        if stored.log_end >= log_end:
            return leaves, end
        seq, prev = stored.size, stored.last_hash
        try:
            fd = os.open(self.log.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise from_os_error(exc, "reading the log") from None
        try:
            for frame in self.log.scan(stored.log_end, log_end):
                raw = _read(fd, frame)
                start = frame.spans[0][0]
                for record, (offset, length) in zip(frame.records, frame.spans, strict=True):
                    if record.seq != seq + 1 or record.prev != prev:
                        if seq == stored.size and stored.size:
                            raise CorruptIndex("the index's Merkle tree does not continue into the log: run imstore reindex")
                        return leaves[: end.size - stored.size], end  # a gap in the chain: the tree stops at the last whole frame
                    payload = raw[offset - start : offset - start + length]
                    if blake3(payload).digest() != record.record_hash:
                        raise CorruptLog(f"the log changed under record seq {record.seq} while it was read")
                    leaves.append(merkle.leaf_hash(payload))
                    seq, prev = record.seq, record.record_hash
                end = Stored(seq, frame.end, prev)
                if limit is not None and len(leaves) >= limit:
                    break
        except CorruptLog:
            pass  # damage: the tree stops before it (those records cannot be proven)
        finally:
            os.close(fd)
        return leaves[: end.size - stored.size], end


def _read(fd: int, frame: Frame) -> bytes:
    """The bytes of a frame's records (one pread, usually from the page cache)."""
    if not frame.spans:
        raise CorruptLog(f"the frame at offset {frame.offset} has no record places")
    start = frame.spans[0][0]
    try:
        return os.pread(fd, frame.spans[-1][0] + frame.spans[-1][1] - start, start)
    except OSError as exc:
        raise from_os_error(exc, "reading the log") from None


class TreeView:
    """The tree of a log prefix: the table's nodes for its stored part, the rest computed from the leaves after it."""

    def __init__(self, table: TreeTable, stored: int, tail: list[bytes]):
        self.table = table
        self.stored = stored
        self.size = stored + len(tail)
        self._tail = tail
        self._made: dict[tuple[int, int], bytes] = {}

    def prefetch(self, compute: Callable[[TreeView], object]) -> TreeView:
        """Read in one query the stored nodes compute(self) will ask for; returns self.

        The proof algorithms choose their nodes from the tree's size and the leaf's index
        alone, never from hash values: a first run against placeholder hashes names them.
        """
        asked: list[tuple[int, int]] = []
        compute(_Asking(self, asked))  # type: ignore[arg-type]
        ids = {(level << _LEVEL_SHIFT) | index: (level, index) for level, index in asked if (index + 1) << level <= self.stored}
        if ids:
            marks = ",".join("?" * len(ids))
            for node_id, hash_ in self.table.db.execute(f"SELECT id, hash FROM merkle WHERE id IN ({marks})", list(ids)):
                if len(hash_) == merkle.HASH_SIZE:
                    self._made[ids[node_id]] = hash_
        return self

    def node(self, level: int, index: int) -> bytes:
        if (index + 1) << level <= self.stored:
            return self._made.get((level, index)) or self.table.node(level, index)
        if level == 0:
            return self._tail[index - self.stored]
        made = self._made.get((level, index))
        if made is None:  # straddles the stored part's end or lies after it: at most STRIDE leaves' worth of hashing
            made = merkle.node_hash(self.node(level - 1, 2 * index), self.node(level - 1, 2 * index + 1))
            self._made[(level, index)] = made
        return made


class _Asking:
    """A tree of the same size whose nodes are placeholders: it notes which stored nodes are asked for."""

    def __init__(self, view: TreeView, asked: list[tuple[int, int]]):
        self.size = view.size
        self.asked = asked

    def node(self, level: int, index: int) -> bytes:
        self.asked.append((level, index))
        return bytes(merkle.HASH_SIZE)
