"""The import stat cache: (name, size, mtime_ns, ctime_ns, inode, device) -> content hash.

A name is a file's path relative to the source root, i.e. its key without the
prefix (a file reached through two followed symlinks has two names).

It lets a re-import of an unchanged tree skip reading its files. It lives in the
store directory (`import-cache/<hash of the source root>.msgpack`, one small
file per source tree, loaded whole: a re-import needs every entry), is
disposable (any problem with it just means files are read again) and never
decides what is stored: a hit only says which object the file's bytes hashed to,
and the import still checks that object.

Like git's "racily clean" rule, an entry is only trusted when the file's mtime and
ctime were older than the moment its stat was taken by a safe margin; a file
written in the same clock tick as the import is always read again.

After an import that ended with every file of the tree as its key's latest
version, the cache also records that log position (seq and chain hash) and the
prefix. While the log is still at that position, a file whose stat matches is
unchanged without asking the index at all: the re-import of an unchanged tree
then costs a directory walk. Any write to the store moves the position.
"""

from __future__ import annotations

import os
from pathlib import Path

import msgpack

from . import layout
from .fsio import atomic_write
from .hashing import hash_bytes

__all__ = ["StatCache", "FileStat", "file_stat", "CACHE_DIR"]

CACHE_DIR = layout.IMPORT_CACHE
FORMAT = 2  # 2: entries by name (1 had them by path, and no "latest")
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
        # name -> [size, mtime_ns, ctime_ns, inode, device, hash, seen_ns], as stored
        self._entries: dict[str, list] = {}
        self._changed = False
        self._latest: dict | None = None  # {"at": [seq, chain hash], "prefix": P}: see the module's docstring
        self._confirmed: set[str] = set()
        try:
            # use_list=False: entries come back as tuples, compared with a stat tuple as they are
            loaded = msgpack.unpackb(self.path.read_bytes(), raw=False, strict_map_key=True, use_list=False)
            if (
                isinstance(loaded, dict)
                and loaded.get("format") == FORMAT
                and loaded.get("root") == source_root
                and isinstance(loaded.get("files"), dict)
            ):
                self._entries = loaded["files"]
                latest = loaded.get("latest")
                if isinstance(latest, dict) and isinstance(latest.get("at"), tuple) and isinstance(latest.get("prefix"), str):
                    self._latest = latest
        except (OSError, ValueError, msgpack.UnpackException):
            pass  # missing or garbage: start empty

    def all_latest_at(self, position: tuple[int, str], prefix: str) -> bool:
        """Was every entry its key's (prefix + relative path) latest content at this log position?"""
        latest = self._latest
        return latest is not None and latest["prefix"] == prefix and tuple(latest["at"]) == tuple(position)

    def confirm(self, name: str) -> None:
        """name is in this import and will be its key's latest content once the import commits."""
        self._confirmed.add(name)

    def lookup(self, name: str, stat: FileStat) -> str | None:
        """The hash recorded for name if its stat is exactly the one recorded and was not racy."""
        entry = self._entries.get(name)
        if type(entry) is not tuple or len(entry) != 7 or entry[:5] != stat:
            return None
        if max(stat[1], stat[2]) >= entry[6] - RACY_MARGIN_NS:
            return None
        return entry[5]

    def remember(self, name: str, stat: FileStat, object_hash: str, seen_ns: int) -> None:
        """Note a hash computed from a file whose stat was taken at seen_ns (written by save())."""
        self._entries[name] = (*stat, object_hash, seen_ns)
        self._changed = True

    def save(self, latest_at: tuple[int, str] | None = None, prefix: str = "") -> str | None:
        """Write the cache (temp + rename; no fsync: it is disposable); a warning instead of failing.

        latest_at: the log position at which every confirmed file was its key's latest content
        (entries not confirmed are dropped then); None when that is not known."""
        latest = {"at": tuple(latest_at), "prefix": prefix} if latest_at is not None else None
        if latest is not None:
            gone = [name for name in self._entries if name not in self._confirmed]
            for name in gone:
                del self._entries[name]
            self._changed = self._changed or bool(gone)
        if not self._changed and latest == self._latest:
            return None
        try:
            self.directory.mkdir(exist_ok=True)
            document = {"format": FORMAT, "root": self.root, "files": self._entries, "latest": latest}
            atomic_write(self.path, msgpack.packb(document, use_bin_type=True), durable=False)  # disposable: no fsync
        except (OSError, ValueError) as exc:
            try:
                self.path.unlink()  # a cache that could not be brought up to date must not be trusted
            except OSError:
                pass
            return f"the import stat cache could not be saved ({exc}); the next import reads every file"
        self._changed = False
        self._latest = latest
        return None
