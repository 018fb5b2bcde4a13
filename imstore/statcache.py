"""The import stat cache: (path, size, mtime_ns, ctime_ns, inode, device) -> content hash.

It lets a re-import of an unchanged tree skip reading its files. It lives in the
store directory (`import-cache.sqlite`), is disposable (any problem with it just
means files are read again) and never decides what is stored: a hit only says
which object the file's bytes hashed to, and the import still checks that object.

Like git's "racily clean" rule, an entry is only trusted when the file's mtime and
ctime were older than the moment its stat was taken by a safe margin; a file
written in the same clock tick as the import is always read again.
"""

from __future__ import annotations

import os
import sqlite3
from contextlib import closing
from pathlib import Path

__all__ = ["StatCache", "FileStat", "file_stat", "CACHE_NAME"]

CACHE_NAME = "import-cache.sqlite"
# File-system timestamps come from a coarse clock (a few ms); stay well clear of it.
RACY_MARGIN_NS = 100_000_000


# (size, mtime_ns, ctime_ns, inode, device): the parts of a stat that change whenever a file's content does.
FileStat = tuple[int, int, int, int, int]


def file_stat(result: os.stat_result) -> FileStat:
    return (result.st_size, result.st_mtime_ns, result.st_ctime_ns, result.st_ino, result.st_dev)


class StatCache:
    """Cached hashes of files under one source root, loaded at once and saved after a commit."""

    def __init__(self, path: Path, root: str):
        self.path = Path(path)
        self.root = root.rstrip("/") + "/"
        self._known: dict[str, tuple[FileStat, str]] = {}
        self._fresh: dict[str, tuple[FileStat, str, int]] = {}
        try:
            with closing(self._connect()) as db:
                rows = db.execute(
                    "SELECT path, size, mtime_ns, ctime_ns, inode, device, hash, seen_ns FROM files WHERE path >= ? AND path < ?",
                    (self.root, self.root[:-1] + "0"),  # '0' sorts right after '/'
                ).fetchall()
        except (sqlite3.Error, OSError):
            rows = []
        for path_text, size, mtime, ctime, inode, device, object_hash, seen_ns in rows:
            if max(mtime, ctime) < seen_ns - RACY_MARGIN_NS:
                self._known[path_text] = ((size, mtime, ctime, inode, device), object_hash)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=5, isolation_level=None)
        db.execute("PRAGMA synchronous=OFF")
        db.execute(
            "CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, ctime_ns INTEGER,"
            " inode INTEGER, device INTEGER, hash TEXT, seen_ns INTEGER) WITHOUT ROWID"
        )
        return db

    def lookup(self, path: str, stat: FileStat) -> str | None:
        """The hash recorded for path if its stat is exactly the one recorded."""
        known = self._known.get(path)
        if known is not None and known[0] == stat:
            return known[1]
        return None

    def remember(self, path: str, stat: FileStat, object_hash: str, seen_ns: int) -> None:
        """Note a hash computed from a file whose stat was taken at seen_ns (saved by save())."""
        if self._known.get(path) != (stat, object_hash):
            self._fresh[path] = (stat, object_hash, seen_ns)

    def save(self) -> str | None:
        """Write the new entries; returns a warning instead of failing (the cache is disposable)."""
        if not self._fresh:
            return None
        rows = [
            (path, *stat, object_hash, seen_ns)
            for path, (stat, object_hash, seen_ns) in self._fresh.items()
        ]
        try:
            with closing(self._connect()) as db:
                db.execute("BEGIN")
                db.executemany("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
                db.execute("COMMIT")
        except (sqlite3.Error, OSError) as exc:
            try:
                self.path.unlink()
            except OSError:
                pass
            return f"the import stat cache could not be saved ({exc}); the next import reads every file"
        self._fresh.clear()
        return None
