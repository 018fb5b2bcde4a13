"""The import stat cache: (path, size, mtime_ns, ctime_ns, inode, device) -> content hash.

It lets a re-import of an unchanged tree skip reading its files. It lives in the
store directory (`import-cache/<hash of the source root>.msgpack`, one small
file per source tree, loaded whole: a re-import needs every entry), is
disposable (any problem with it just means files are read again) and never
decides what is stored: a hit only says which object the file's bytes hashed to,
and the import still checks that object.

Like git's "racily clean" rule, an entry is only trusted when the file's mtime and
ctime were older than the moment its stat was taken by a safe margin; a file
written in the same clock tick as the import is always read again.
"""

from __future__ import annotations

import os
from pathlib import Path

import msgpack

from .hashing import hash_bytes

__all__ = ["StatCache", "FileStat", "file_stat", "CACHE_DIR"]

CACHE_DIR = "import-cache"
# File-system timestamps come from a coarse clock (a few ms); stay well clear of it.
RACY_MARGIN_NS = 100_000_000

# (size, mtime_ns, ctime_ns, inode, device): the parts of a stat that change whenever a file's content does.
FileStat = tuple[int, int, int, int, int]


def file_stat(result: os.stat_result) -> FileStat:
    return (result.st_size, result.st_mtime_ns, result.st_ctime_ns, result.st_ino, result.st_dev)


class StatCache:
    """Cached hashes of files under one source root, loaded at once and saved after an import."""

    def __init__(self, store_root: Path, source_root: str):
        self.directory = Path(store_root) / CACHE_DIR
        self.path = self.directory / f"{hash_bytes(source_root.encode('utf-8', 'surrogateescape'))[:32]}.msgpack"
        self.root = source_root
        # path -> [size, mtime_ns, ctime_ns, inode, device, hash, seen_ns], as stored
        self._entries: dict[str, list] = {}
        self._changed = False
        try:
            loaded = msgpack.unpackb(self.path.read_bytes(), raw=False, strict_map_key=True)
            if isinstance(loaded, dict) and loaded.get("root") == source_root and isinstance(loaded.get("files"), dict):
                self._entries = loaded["files"]
        except (OSError, ValueError, msgpack.UnpackException):
            pass  # missing or garbage: start empty

    def lookup(self, path: str, stat: FileStat) -> str | None:
        """The hash recorded for path if its stat is exactly the one recorded and was not racy."""
        entry = self._entries.get(path)
        if entry is None or len(entry) != 7 or tuple(entry[:5]) != stat:
            return None
        if max(stat[1], stat[2]) >= entry[6] - RACY_MARGIN_NS:
            return None
        return entry[5]

    def remember(self, path: str, stat: FileStat, object_hash: str, seen_ns: int) -> None:
        """Note a hash computed from a file whose stat was taken at seen_ns (written by save())."""
        self._entries[path] = [*stat, object_hash, seen_ns]
        self._changed = True

    def save(self) -> str | None:
        """Write the cache (temp + rename; no fsync: it is disposable); a warning instead of failing."""
        if not self._changed:
            return None
        temp = self.path.with_name(f".tmp-{os.getpid()}-{self.path.name}")
        try:
            self.directory.mkdir(exist_ok=True)
            temp.write_bytes(msgpack.packb({"root": self.root, "files": self._entries}, use_bin_type=True))
            os.replace(temp, self.path)
        except (OSError, ValueError) as exc:
            for leftover in (temp, self.path):
                try:
                    leftover.unlink()
                except OSError:
                    pass
            return f"the import stat cache could not be saved ({exc}); the next import reads every file"
        self._changed = False
        return None
