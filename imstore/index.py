"""The SQLite index: a derived, disposable view of the log.

It maps keys to versions so reads never replay the log, and remembers where each
record sits in the log (so a read can confirm it there). It remembers how far it
has applied the log (offset, seq, hash of the last record); every open catches
it up from there. A broken database (or another schema) is rebuilt from the log;
a log that no longer holds what the index applied is damage (see indexer.py).
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

import msgpack

from .records import GENESIS, Record

__all__ = ["Index", "IndexState", "SchemaMismatch", "is_corruption", "use_wal"]

SCHEMA_VERSION = 3  # 2: each version's place in the log (log_offset, log_length) and the damaged table; 3: epochs (R7)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS versions (
    key TEXT NOT NULL,
    version INTEGER NOT NULL,
    seq INTEGER NOT NULL UNIQUE,
    op TEXT NOT NULL,
    hash TEXT,
    size INTEGER NOT NULL,
    time_ns INTEGER NOT NULL,
    content_type TEXT,
    message TEXT,
    meta BLOB,
    frame_offset INTEGER,
    log_offset INTEGER,
    log_length INTEGER,
    PRIMARY KEY (key, version)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS latest (
    key TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    op TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS state (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    schema INTEGER NOT NULL,
    frame_offset INTEGER NOT NULL,
    log_end INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    last_hash BLOB NOT NULL,
    frame_checksum BLOB NOT NULL,
    scrub_offset INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS epochs (
    epoch INTEGER PRIMARY KEY,
    seq INTEGER NOT NULL,
    fork_seq INTEGER NOT NULL,
    fork_hash TEXT NOT NULL,
    node TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS damaged (
    offset INTEGER PRIMARY KEY,
    end_offset INTEGER NOT NULL,
    reason TEXT NOT NULL
);
"""


class SchemaMismatch(sqlite3.DatabaseError):
    """The index was made by another version of imstore: it is rebuilt from the log."""


# What SQLite says when the database file itself is not one (or is damaged): only these make
# a derived file worth deleting and rebuilding. A full disk, a read-only mount or an I/O error
# says nothing about the file, and must change nothing (HARDENING D1, D2).
CORRUPTION = frozenset({"SQLITE_CORRUPT", "SQLITE_NOTADB", "SQLITE_CORRUPT_INDEX", "SQLITE_CORRUPT_SEQUENCE", "SQLITE_CORRUPT_VTAB"})


def is_corruption(error: sqlite3.Error) -> bool:
    return isinstance(error, SchemaMismatch) or getattr(error, "sqlite_errorname", "") in CORRUPTION


class IndexState(NamedTuple):
    """How far the index has applied the log.

    A NamedTuple, not a dataclass: it is made on every start, where a frozen
    dataclass costs ~1 ms to define and a NamedTuple ~0.2 ms (bench_startup.py).
    """

    frame_offset: int  # where the last applied frame starts (-1: none)
    log_end: int  # where the last applied frame ends
    seq: int
    last_hash: bytes  # chain hash of the last applied record
    frame_checksum: bytes  # checksum of the last applied frame, to spot a replaced log


EMPTY_STATE = IndexState(-1, 0, 0, GENESIS, b"")

_COLUMNS = "key, version, seq, op, hash, size, time_ns, content_type, message, meta"


def use_wal(db: sqlite3.Connection, seconds: float = 30.0) -> None:
    """Put db in WAL mode. Processes opening a new database at once race to switch it, and SQLite
    answers the losers "database is locked" at once, without its busy handler: ask again, bounded."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.005)  # the winner's switch takes a moment; nothing else can be waited on


class Index:
    """The index database. read_only: opened as an immutable file (a store on a read-only mount)."""

    def __init__(self, path: Path | str, *, read_only: bool = False):
        self.path = Path(path) if path != ":memory:" else path
        self.db = self._connect_read_only() if read_only else self._connect()

    def _connect_read_only(self) -> sqlite3.Connection:
        # immutable=1: no -wal/-shm files and no locks, which a read-only directory cannot hold.
        db = sqlite3.connect(f"file:{self.path}?immutable=1", uri=True, isolation_level=None, check_same_thread=False)
        self._check_schema(db)
        return db

    def copy_to_memory(self) -> Index:
        """An in-memory copy of this index, which can be caught up (a read-only store whose index is behind)."""
        copy = Index(":memory:")
        self.db.backup(copy.db)
        return copy

    @staticmethod
    def _check_schema(db: sqlite3.Connection) -> None:
        row = db.execute("SELECT schema FROM state WHERE id = 1").fetchone()
        if row is None or row[0] != SCHEMA_VERSION:
            raise SchemaMismatch("index schema version mismatch")

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        # WAL + NORMAL: no fsync per commit. A lost commit is harmless: the index
        # notices it is behind the log and catches up.
        use_wal(db)
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(_SCHEMA)
        row = db.execute("SELECT schema FROM state WHERE id = 1").fetchone()
        if row is None:
            db.execute(
                "INSERT OR IGNORE INTO state VALUES (1, ?, ?, 0, 0, ?, ?, 0)",
                (SCHEMA_VERSION, EMPTY_STATE.frame_offset, GENESIS, b""),
            )
        elif row[0] != SCHEMA_VERSION:
            raise SchemaMismatch("index schema version mismatch")
        return db

    def close(self) -> None:
        self.db.close()

    @staticmethod
    def remove_files(path: Path) -> None:
        for suffix in ("", "-wal", "-shm", "-journal"):
            try:
                os.unlink(str(path) + suffix)
            except FileNotFoundError:
                pass

    # ---------------------------------------------------------------- state
    def state(self) -> IndexState:
        row = self.db.execute("SELECT frame_offset, log_end, seq, last_hash, frame_checksum FROM state WHERE id = 1").fetchone()
        return IndexState(*row)

    def begin(self) -> IndexState:
        """Start a write transaction (other index writers wait) and return the state in it."""
        self.db.execute("BEGIN IMMEDIATE")
        return self.state()

    def commit(self) -> None:
        self.db.execute("COMMIT")

    def rollback(self) -> None:
        if self.db.in_transaction:
            self.db.execute("ROLLBACK")

    def apply(self, records: Iterable[Record], frame_offset: int, log_end: int, frame_checksum: bytes,
              spans: Iterable[tuple[int, int]] = ()) -> None:  # fmt: skip
        """Add the records of one frame (inside a transaction from begin()); spans: where each record's bytes are."""
        last = None
        rows = []
        latest = {}
        spans = list(spans)
        for number, record in enumerate(records):
            last = record
            if record.is_epoch:  # never a version: no listing, history or Version shows one (R7)
                self.db.execute("INSERT OR REPLACE INTO epochs VALUES (?,?,?,?,?)", (record.version, record.seq,
                                int(record.meta["fork_seq"]), record.meta["fork_hash"], record.meta["node"]))  # fmt: skip
                continue
            rows.append((*version_row(record), frame_offset, *(spans[number] if number < len(spans) else (None, None))))
            latest[record.key] = (record.key, record.version, record.op)
        if last is None:
            return
        marks = ",".join("?" * 13)
        self.db.executemany(f"INSERT INTO versions ({_COLUMNS}, frame_offset, log_offset, log_length) VALUES ({marks})", rows)
        self.db.executemany("INSERT OR REPLACE INTO latest VALUES (?,?,?)", latest.values())
        self.db.execute(
            "UPDATE state SET frame_offset = ?, log_end = ?, seq = ?, last_hash = ?, frame_checksum = ? WHERE id = 1",
            (frame_offset, log_end, last.seq, last.record_hash, frame_checksum),
        )

    def note_damage(self, offset: int, end: int, reason: str) -> None:
        """Remember a damaged stretch of the log that the index was built around (inside a transaction)."""
        self.db.execute("INSERT OR REPLACE INTO damaged VALUES (?, ?, ?)", (offset, end, reason))

    def damaged(self) -> list[tuple[int, int, str]]:
        """(offset, end, reason) of each damaged stretch of the log the index skipped, in log order."""
        return self.db.execute("SELECT offset, end_offset, reason FROM damaged ORDER BY offset").fetchall()

    def scrub_offset(self) -> int:
        """Where the writers' background check of the log (Indexer.scrub) goes on from."""
        return self.db.execute("SELECT scrub_offset FROM state WHERE id = 1").fetchone()[0]

    def set_scrub_offset(self, offset: int) -> None:
        self.db.execute("UPDATE state SET scrub_offset = ? WHERE id = 1", (offset,))

    def epoch(self) -> int:
        """The store's epoch: its log's highest epoch record (0 when it was never promoted)."""
        return self.db.execute("SELECT coalesce(max(epoch), 0) FROM epochs").fetchone()[0]

    def epochs(self) -> list[tuple[int, int, int, str, str]]:
        """(epoch, seq, fork_seq, fork_hash, node) of each promotion, in log order."""
        return self.db.execute("SELECT epoch, seq, fork_seq, fork_hash, node FROM epochs ORDER BY seq").fetchall()

    def record_span(self, key: str, version: int) -> tuple[int, int, int] | None:
        """(frame offset, record offset, record length) of key's version in the log, as the index remembers it."""
        row = self.db.execute("SELECT frame_offset, log_offset, log_length FROM versions WHERE key = ? AND version = ?",
                              (key, version)).fetchone()  # fmt: skip
        return (row[0], row[1], row[2]) if row is not None and row[1] is not None else None

    def clear(self) -> None:
        """Forget everything (inside a transaction): the next catch-up replays the whole log."""
        self.db.execute("DELETE FROM damaged")
        self.db.execute("DELETE FROM epochs")
        self.db.execute("DELETE FROM versions")
        self.db.execute("DELETE FROM latest")
        self.db.execute(
            "UPDATE state SET frame_offset = ?, log_end = 0, seq = 0, last_hash = ?, frame_checksum = ? WHERE id = 1",
            (EMPTY_STATE.frame_offset, GENESIS, b""),
        )

    # ---------------------------------------------------------------- queries
    def latest_version(self, key: str) -> tuple[int, str] | None:
        row = self.db.execute("SELECT version, op FROM latest WHERE key = ?", (key,)).fetchone()
        return (row[0], row[1]) if row else None

    def latest_row(self, key: str) -> tuple[tuple, tuple[int, int, int] | None] | None:
        """(the latest version's row, its record_span) of key in one query; None if the index has no such row."""
        row = self.db.execute(
            "SELECT v.key, v.version, v.seq, v.op, v.hash, v.size, v.time_ns, v.content_type, v.message, v.meta,"
            " v.frame_offset, v.log_offset, v.log_length FROM latest AS l JOIN versions AS v"
            " ON v.key = l.key AND v.version = l.version WHERE l.key = ?",
            (key,),
        ).fetchone()
        if row is None:
            return None
        return row[:10], ((row[10], row[11], row[12]) if row[11] is not None else None)

    def version(self, key: str, version: int) -> tuple | None:
        return self.db.execute(f"SELECT {_COLUMNS} FROM versions WHERE key = ? AND version = ?", (key, version)).fetchone()

    def version_at(self, key: str, time_ns: int) -> tuple | None:
        """The version current at an instant: the newest one written at or before it."""
        return self.db.execute(
            f"SELECT {_COLUMNS} FROM versions WHERE key = ? AND time_ns <= ? ORDER BY version DESC LIMIT 1",
            (key, time_ns),
        ).fetchone()

    def history(self, key: str, limit: int | None = None) -> list[tuple]:
        """Versions of key, newest first."""
        return self.db.execute(
            f"SELECT {_COLUMNS} FROM versions WHERE key = ? ORDER BY version DESC LIMIT ?",
            (key, -1 if limit is None else limit),
        ).fetchall()

    def ls(self, prefix: str = "", include_deleted: bool = False, limit: int | None = None) -> list[tuple]:
        """Latest version of each key starting with prefix, in key order."""
        where = "l.key >= ? AND l.key < ?" if prefix else "1"
        params: list = [prefix, prefix + "\U0010ffff"] if prefix else []
        if not include_deleted:
            where += " AND l.op != 'delete'"
        sql = (
            f"SELECT v.{_COLUMNS.replace(', ', ', v.')} FROM latest l JOIN versions v"
            f" ON v.key = l.key AND v.version = l.version WHERE {where} ORDER BY l.key LIMIT ?"
        )
        rows = self.db.execute(sql, [*params, -1 if limit is None else limit]).fetchall()
        return [row for row in rows if row[0].startswith(prefix)]

    def log(self, after: int = 0, limit: int | None = None) -> list[tuple]:
        return self.db.execute(
            f"SELECT {_COLUMNS} FROM versions WHERE seq > ? ORDER BY seq LIMIT ?",
            (after, -1 if limit is None else limit),
        ).fetchall()

    def latest_rows(self, keys: Iterable[str], columns: str = "") -> dict[str, tuple]:
        """The latest version row (puts and tombstones) of each of keys that exists (key first, then columns)."""
        found: dict[str, tuple] = {}
        wanted = list(dict.fromkeys(keys))
        columns = "v.key, " + ", ".join(f"v.{name}" for name in columns.split(", ")) if columns else f"v.{_COLUMNS.replace(', ', ', v.')}"
        if len(wanted) > 2000:
            # Many keys (a batch import): one range scan between the smallest and largest beats many IN lists.
            wanted_set = set(wanted)
            sql = f"SELECT {columns} FROM latest l JOIN versions v ON v.key = l.key AND v.version = l.version WHERE l.key BETWEEN ? AND ?"
            return {row[0]: row for row in self.db.execute(sql, (min(wanted), max(wanted))) if row[0] in wanted_set}
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            marks = ",".join("?" * len(chunk))
            sql = f"SELECT {columns} FROM latest l JOIN versions v ON v.key = l.key AND v.version = l.version WHERE l.key IN ({marks})"
            found.update((row[0], row) for row in self.db.execute(sql, chunk))
        return found

    def hashes(self) -> set[str]:
        return {row[0] for row in self.db.execute("SELECT DISTINCT hash FROM versions WHERE hash IS NOT NULL")}

    def count(self) -> int:
        return self.db.execute("SELECT count(*) FROM versions").fetchone()[0]

    def all_rows(self) -> Iterable[tuple]:
        return self.db.execute(f"SELECT {_COLUMNS} FROM versions ORDER BY seq")

    # ---------------------------------------------------------------- pages (the server's listings, HARDENING S2)
    @staticmethod
    def _latest_where(prefix: str, include_deleted: bool, after: str | None, upto: str | None) -> tuple[str, list]:
        where, params = ["1"], []
        if prefix:
            where.append("l.key >= ? AND l.key < ?")
            params += [prefix, prefix + "\U0010ffff"]
        if after is not None:
            where.append("l.key > ?")
            params.append(after)
        if upto is not None:
            where.append("l.key <= ?")
            params.append(upto)
        if not include_deleted:
            where.append("l.op != 'delete'")
        return " AND ".join(where), params

    def ls_page_end(self, prefix: str, include_deleted: bool, after: str | None, limit: int) -> tuple[str | None, bool]:
        """(the limit-th key after `after`, or None if there are fewer; whether any key follows it)."""
        where, params = self._latest_where(prefix, include_deleted, after, None)
        keys = [row[0] for row in self.db.execute(
            f"SELECT l.key FROM latest l WHERE {where} ORDER BY l.key LIMIT 2 OFFSET ?", [*params, limit - 1])]  # fmt: skip
        return (keys[0] if keys else None), len(keys) == 2

    def ls_page(self, prefix: str, include_deleted: bool, after: str | None, upto: str | None, limit: int) -> list[tuple]:
        """Latest version rows of keys starting with prefix, in key order: after `after`, up to `upto` (each optional)."""
        where, params = self._latest_where(prefix, include_deleted, after, upto)
        sql = (
            f"SELECT v.{_COLUMNS.replace(', ', ', v.')} FROM latest l JOIN versions v"
            f" ON v.key = l.key AND v.version = l.version WHERE {where} ORDER BY l.key LIMIT ?"
        )
        return self.db.execute(sql, [*params, limit]).fetchall()  # a short page is the end: nothing filtered out here

    def log_page_end(self, after: int, limit: int) -> tuple[int | None, bool]:
        """(the seq of the limit-th record after `after`, or None if there are fewer; whether any record follows it)."""
        seqs = [row[0] for row in self.db.execute("SELECT seq FROM versions WHERE seq > ? ORDER BY seq LIMIT 2 OFFSET ?",
                                                  (after, limit - 1))]  # fmt: skip
        return (seqs[0] if seqs else None), len(seqs) == 2

    def log_page(self, after: int, upto: int | None, limit: int) -> list[tuple]:
        """Records after seq `after` and up to seq `upto` (if given), in commit order."""
        if upto is None:
            return self.log(after, limit)
        return self.db.execute(f"SELECT {_COLUMNS} FROM versions WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT ?",
                               (after, upto, limit)).fetchall()  # fmt: skip


def version_row(item) -> tuple:
    """The index row (in _COLUMNS order) of a Record or a Version: the one place that lays it out."""
    return (
        item.key,
        item.version,
        item.seq,
        item.op,
        item.hash,
        item.size,
        item.time_ns,
        item.content_type,
        item.message,
        _pack_meta(item.meta),
    )


def _pack_meta(meta: dict) -> bytes | None:
    if not meta:
        return None
    return msgpack.packb(meta, use_bin_type=True)
