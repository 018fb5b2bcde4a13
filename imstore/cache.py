"""The read cache: a disposable diskcache in front of one store.

It keeps object bytes (up to a size limit) and resolved versions, which never
change once written, so it can make hot reads cheap and answer reads while the
store cannot be read (an unmounted NAS, an I/O error). "Latest of a key" is kept
with the log position it was read at and is only used when the store is down,
marked stale. Nothing it returns is trusted: object bytes are checked against
their hash and records against a checksum; anything that fails, or any error of
the cache itself, drops the entry (or the whole cache) and the read goes to the
store. The cache is never fatal.

Layout: <base>/<BLAKE3 of the store's resolved path, 32 hex>/ holds `store-id` (the
store it belongs to; a cache whose id differs from the store's is cleared) and
`data/` (the diskcache directory). It is found by path, not by reading the
store, so it still answers when the store directory has vanished.

Start-up cost: importing and opening diskcache costs ~17 ms, more than a whole
`imstore get` can afford, so reads go through a plain sqlite3 connection to
diskcache's own table (columns key, raw, mode, filename, value of diskcache 5;
anything unexpected is a miss), and diskcache itself is imported only to fill
the cache. Those internals are why diskcache is pinned below 6, and
tests/test_diskcache_internals.py checks them. A process also keeps a small memo of entries it has seen, still
hash-checked on every use.
"""

from __future__ import annotations

import os
import sqlite3
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from .cachedisk import (  # re-exported: these lived here
    CACHE_DIR_ENV,
    CACHE_SIZE_ENV,
    COUNTERS_COMPACT_SIZE,
    COUNTERS_NAME,
    DATA_NAME,
    DB_NAME,
    DEFAULT_MAX_OBJECT_SIZE,
    DEFAULT_SIZE_LIMIT,
    MARKER_NAME,
    MEMO_BYTES,
    MEMO_RECORDS,
    NO_CACHE_ENV,
    OPEN_DEADLINE,
    REFRESH_AFTER,
    ROW_FIELDS,
    CachedObjectReader,
    CacheSettings,
    CacheStats,
    cache_folder,
)
from .cachedisk import MODE_BINARY as _MODE_BINARY
from .cachedisk import MODE_RAW as _MODE_RAW
from .cachedisk import UPSERT as _UPSERT
from .cachedisk import decode_record as _decode_record
from .cachedisk import encode_record as _encode_record
from .cachedisk import is_row_of as _is_row_of
from .cachedisk import remove_tree as _remove_tree
from .cachedisk import set_many as _set_many
from .fsio import atomic_write
from .hashing import blake3
from .validate import parse_size  # re-exported: the CLI's --cache-size and --max-size import it from here

__all__ = [
    "CacheSettings",
    "StoreCache",
    "CachedObjectReader",
    "CacheStats",
    "parse_size",
    "cache_folder",
    "DEFAULT_SIZE_LIMIT",
    "DEFAULT_MAX_OBJECT_SIZE",
    "DEFAULT_SIZE_LIMIT",
    "CACHE_DIR_ENV",
    "CACHE_SIZE_ENV",
    "NO_CACHE_ENV",
    "MARKER_NAME",
    "DB_NAME",
    "DATA_NAME",
    "ROW_FIELDS",
    "MEMO_BYTES",
    "MEMO_RECORDS",
    "_UPSERT",
    "_set_many",
    "_MODE_RAW",
    "_MODE_BINARY",
]

class StoreCache:
    """The cache of one store (by path and store id). Every method is safe to call
    in any state: errors turn into misses and a note in `notes`, never an exception."""

    def __init__(self, settings: CacheSettings, store_root: str | os.PathLike, store_id: str):
        self.settings = settings
        self.max_object_size = settings.max_object_size
        self.folder = cache_folder(settings, store_root)
        self.data_dir = self.folder / DATA_NAME
        self.store_id = store_id
        self.notes: list[str] = []  # what went wrong with the cache (for --debug), never fatal
        self.hits = 0
        self.misses = 0
        self._disabled = False
        self._checked_marker = False
        self._reader: sqlite3.Connection | None = None
        self._writer = None  # diskcache.Cache, opened only to fill
        self._held: list[tuple[str, bytes]] | None = None  # entries batched() will write together
        self._memo_objects: dict[str, bytes] = {}
        self._memo_bytes = 0
        self._memo_records: dict[str, tuple] = {}

    # ================================================================ finding
    @staticmethod
    def existing_store_id(settings: CacheSettings, store_root: str | os.PathLike) -> str | None:
        """The store id recorded by the cache of store_root, if it has one (for an absent store)."""
        if not settings.enabled:
            return None
        try:
            marker = (cache_folder(settings, store_root) / MARKER_NAME).read_text("utf-8").strip()
        except (OSError, UnicodeDecodeError):
            return None
        return marker if 0 < len(marker) <= 64 and marker.isprintable() else None

    @classmethod
    def for_path(cls, settings: CacheSettings, store_root: str | os.PathLike) -> StoreCache:
        """The cache of store_root as it is on disk, without opening the store (for stats and clear)."""
        return cls(settings, store_root, cls.existing_store_id(settings, store_root) or "")

    # ================================================================ reading
    def object_bytes(self, object_id: str) -> bytes | None:
        """The object's bytes if cached and they hash to object_id; else None."""
        data = self._memo_objects.get(object_id)
        if data is not None:
            if blake3(data).hexdigest() == object_id:
                self.hits += 1
                return data
            self._forget_memo(object_id)
        entry = self._fetch("o:" + object_id)
        if entry is None:
            self.misses += 1
            return None
        data, stored_at = entry
        if blake3(data).hexdigest() != object_id:
            self.notes.append(f"cached object {object_id} did not match its hash; dropped it")
            self._drop("o:" + object_id)
            self.misses += 1
            return None
        self.hits += 1
        self._remember_object(object_id, data)
        self._refresh_if_old("o:" + object_id, data, stored_at)
        return data

    @staticmethod
    def reader(object_id: str, data: bytes) -> CachedObjectReader:
        """A reader over object bytes the cache gave (checked against object_id as they are read)."""
        return CachedObjectReader(object_id, data)

    def version_row(self, key: str, version: int) -> tuple | None:
        """The index row of (key, version) if cached (rows of written versions never change)."""
        row = self._record(f"v:{version}:{key}")
        return row if _is_row_of(row, key, version) else None

    def latest(self, key: str) -> tuple[tuple, int] | None:
        """(row, log seq it was read at) of the key's latest version as last seen, or None.

        The newer of this object's memo and the cache file: another process, or another
        thread's Store in a serve worker, may have seen (and cached) a newer version since
        this one remembered its own. Only asked while the store is down, so the read is cheap enough.
        """
        name = f"l:{key}"
        best = None
        for found in (self._memo_records.get(name), self._record_quietly(name)):
            if found is None or len(found) != 2 or not isinstance(found[1], int):
                continue
            row = tuple(found[0]) if isinstance(found[0], (list, tuple)) else None
            if _is_row_of(row, key) and (best is None or row[1] > best[0][1]):
                best = (row, found[1])
        if best is None:
            self.misses += 1
        else:
            self.hits += 1
        return best

    def ids_with_prefix(self, prefix: str) -> list[str]:
        """Cached object ids starting with prefix (at most two: enough to call it ambiguous)."""
        reader = self._open_reader()
        if reader is None:
            return []
        try:
            rows = reader.execute(
                "SELECT key FROM Cache WHERE key >= ? AND key < ? AND raw = 1 LIMIT 2", ("o:" + prefix, "o:" + prefix + "g")
            ).fetchall()
        except sqlite3.Error as exc:
            self._cache_error(exc)
            return []
        return [row[0][2:] for row in rows if isinstance(row[0], str)]

    def _record(self, name: str) -> tuple | None:
        row = self._memo_records.get(name)
        if row is not None:
            self.hits += 1
            return row
        entry = self._fetch(name)
        if entry is None:
            self.misses += 1
            return None
        blob, stored_at = entry
        row = _decode_record(blob)
        if row is None:
            self.notes.append(f"cached record {name!r} failed its checksum; dropped it")
            self._drop(name)
            self.misses += 1
            return None
        self.hits += 1
        self._remember_record(name, row)
        self._refresh_if_old(name, blob, stored_at)
        return row

    def _fetch(self, name: str) -> tuple[bytes, float] | None:
        """(raw bytes, store time) under name, read straight from diskcache's table; not yet checked."""
        reader = self._open_reader()
        if reader is None:
            return None
        try:
            row = reader.execute("SELECT mode, filename, value, store_time FROM Cache WHERE key = ? AND raw = 1", (name,)).fetchone()
        except sqlite3.Error as exc:
            self._cache_error(exc)
            return None
        if row is None:
            return None
        mode, filename, value, stored_at = row
        if mode == _MODE_RAW and isinstance(value, bytes):
            data = value
        elif mode == _MODE_BINARY and isinstance(filename, str) and ".." not in filename:
            try:
                with open(self.data_dir / filename, "rb") as handle:
                    data = handle.read(self.max_object_size + 1)
            except OSError:
                self.notes.append(f"cached file for {name!r} is unreadable; dropped it")
                self._drop(name)
                return None
        else:
            return None
        return data, stored_at if isinstance(stored_at, float) else 0.0

    def _refresh_if_old(self, name: str, data: bytes, stored_at: float) -> None:
        """Store a verified entry again when it is read long after it was stored.

        Eviction is diskcache's least-recently-stored (so reads never write); re-storing
        what is still read about once a day makes it least-recently-used at that grain.
        """
        if time.time() - stored_at > REFRESH_AFTER:
            self._store(name, data)

    def _open_reader(self) -> sqlite3.Connection | None:
        if self._reader is not None:
            return self._reader
        if self._disabled or not self._marker_ok():
            return None
        database = self.data_dir / DB_NAME
        if not database.is_file():
            return None  # nothing cached yet: reading creates nothing
        try:
            # Read-only: closing it never checkpoints the WAL (a read-write close would, ~2 ms).
            uri = "file:" + urllib.parse.quote(str(database)) + "?mode=ro"
            reader = sqlite3.connect(uri, uri=True, timeout=1.0, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            self._cache_error(exc)
            return None
        self._reader = reader
        return reader

    # ================================================================ filling
    def put_object(self, object_id: str, data: bytes) -> None:
        """Keep an object's bytes (only if small enough and they hash to object_id)."""
        if len(data) > self.max_object_size or object_id in self._memo_objects:
            return
        if blake3(data).hexdigest() != object_id:
            return  # never let wrong bytes in
        self._store("o:" + object_id, data)
        self._remember_object(object_id, data)

    def put_version_row(self, row: tuple) -> None:
        name = f"v:{row[1]}:{row[0]}"
        if name not in self._memo_records:
            self._store(name, _encode_record(list(row)))
            self._remember_record(name, tuple(row))

    def note_latest(self, row: tuple, seq: int | Callable[[], int]) -> None:
        """Remember row as the latest version of its key, as of log position seq (a callable: asked only if written)."""
        name = f"l:{row[0]}"
        known = self._memo_records.get(name) or self._record_quietly(name)
        if known is not None and len(known) == 2 and _is_row_of(tuple(known[0]), row[0]) and known[0][1] >= row[1]:
            return  # this version (or a newer one, seen by another process) is already cached: no write
        if callable(seq):
            seq = seq()
        entry = (tuple(row), seq)
        self._store(name, _encode_record([list(row), seq]))
        self._remember_record(name, entry)

    def _record_quietly(self, name: str) -> tuple | None:
        entry = self._fetch(name)
        return _decode_record(entry[0]) if entry is not None else None

    @contextmanager
    def batched(self) -> Iterator[None]:
        """Hold the fills made inside and write them in one transaction at the end.

        One BEGIN IMMEDIATE/COMMIT instead of one per entry: the cache's write lock is
        shared by every process filling it, and a server's workers took turns on it for
        each of the three entries of every put. Use it from one thread (like a Store).
        """
        if self._held is not None:
            yield
            return
        self._held = []
        try:
            yield
        finally:
            held, self._held = self._held, None
            if held:
                self._store_all(held)

    def _store(self, name: str, value: bytes) -> None:
        if self._held is not None:
            self._held.append((name, value))
        else:
            self._store_all([(name, value)])

    def _store_all(self, entries: list[tuple[str, bytes]]) -> None:
        writer = self._open_writer()
        if writer is None:
            return
        try:
            if len(entries) == 1:
                writer.set(*entries[0])
            else:
                _set_many(writer, entries)
        except sqlite3.DatabaseError as exc:
            self._cache_error(exc)
        except Exception as exc:  # noqa: BLE001 -- OSError (its disk is full), diskcache.Timeout, ...: never fatal
            import diskcache  # already imported by _open_writer

            if isinstance(exc, diskcache.Timeout):
                # Other processes held the cache's write lock past the timeout: skip this fill
                # (a later read fills it), but keep the cache: busy is not broken.
                self.notes.append("the cache was busy; left some entries unfilled")
                return
            self.notes.append(f"cannot fill the cache: {type(exc).__name__}: {exc}")
            self._close_connections()
            self._disabled = True  # stop trying in this process

    def _open_writer(self):
        if self._writer is not None:
            return self._writer
        if self._disabled or not self._marker_ok(create=True):
            return None
        if self.data_dir.exists() and not self.data_dir.is_dir():
            self.notes.append(f"{self.data_dir} was not a directory; rebuilt the cache")
            self._remove_data()
        deadline = time.monotonic() + OPEN_DEADLINE
        rebuilt = False
        while True:
            try:
                import diskcache  # only here: it costs ~10 ms to import

                self._writer = diskcache.Cache(
                    str(self.data_dir),
                    timeout=1.0,
                    size_limit=self.settings.size_limit,
                    eviction_policy="least-recently-stored",  # reads never write
                    statistics=False,
                )
                return self._writer
            except sqlite3.OperationalError as exc:
                # Another process is creating it at the same instant: retry until the deadline.
                if time.monotonic() > deadline:
                    self.notes.append(f"the cache stayed busy ({exc}); going without it for this call")
                    self._disabled = True
                    return None
                time.sleep(0.01)
            except sqlite3.DatabaseError as exc:
                if rebuilt:
                    self.notes.append(f"the cache cannot be rebuilt ({exc}); going without it")
                    self._disabled = True
                    return None
                self.notes.append(f"the cache was damaged ({exc}); rebuilt it")
                self._remove_data()
                rebuilt = True
            except Exception as exc:  # noqa: BLE001 -- OSError, diskcache.Timeout, ...: go without the cache
                self.notes.append(f"cannot open the cache at {self.data_dir}: {type(exc).__name__}: {exc}")
                self._disabled = True
                return None

    # ================================================================ store id marker
    def _marker_ok(self, *, create: bool = False) -> bool:
        """Is the cache folder this store's? A foreign or unmarked cache is cleared first."""
        if self._checked_marker:
            return True
        marker = self.folder / MARKER_NAME
        try:
            current = marker.read_text("utf-8").strip()
        except FileNotFoundError:
            current = None
        except (OSError, UnicodeDecodeError):
            current = ""
        if current == self.store_id:
            self._checked_marker = True
            return True
        if current is None and not create and not self.data_dir.exists():
            return False  # no cache yet, and a read does not make one
        if current is not None or self.data_dir.exists():
            self.notes.append("the cache belonged to another store (or had no store id); cleared it")
            self._remove_data()
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            atomic_write(marker, (self.store_id + "\n").encode("utf-8"), durable=False)  # disposable: no fsync
        except OSError as exc:
            self.notes.append(f"cannot create the cache at {self.folder}: {exc}")
            self._disabled = True
            return False
        self._checked_marker = True
        return True

    # ================================================================ failure handling
    def _drop(self, name: str) -> None:
        self._memo_records.pop(name, None)
        writer = self._open_writer()
        if writer is not None:
            try:
                writer.delete(name)
            except Exception as exc:  # noqa: BLE001 -- a cache error is never fatal
                self._cache_error(exc)

    def _cache_error(self, exc: BaseException) -> None:
        """A broken database is rebuilt; anything else (busy, I/O) bypasses the cache for now."""
        if isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, sqlite3.OperationalError):
            self.notes.append(f"the cache database is damaged ({exc}); removed it to be rebuilt")
            self._close_connections()
            self._remove_data()
            return
        self.notes.append(f"cache error ({exc}); reading from the store")
        self._close_connections()
        self._disabled = True

    def _remove_data(self) -> None:
        """Move data/ aside (atomic, so racing processes see old or nothing) and delete it."""
        self._close_connections()
        self._memo_objects.clear()
        self._memo_records.clear()
        self._memo_bytes = 0
        _remove_tree(self.data_dir)

    def _close_connections(self) -> None:
        if self._reader is not None:
            try:
                self._reader.close()
            except sqlite3.Error:
                pass
            self._reader = None
        if self._writer is not None:
            try:
                self._writer.close()
            except Exception:  # noqa: BLE001 -- a broken cache must never break a close
                pass
            self._writer = None

    # ================================================================ memo
    def _remember_object(self, object_id: str, data: bytes) -> None:
        limit = self.settings.memo_bytes
        if len(data) > limit // 16:
            return
        while self._memo_bytes + len(data) > limit and self._memo_objects:
            self._forget_memo(next(iter(self._memo_objects)))
        self._memo_objects[object_id] = data
        self._memo_bytes += len(data)

    def _forget_memo(self, object_id: str) -> None:
        data = self._memo_objects.pop(object_id, None)
        if data is not None:
            self._memo_bytes -= len(data)

    def _remember_record(self, name: str, row: tuple) -> None:
        if MEMO_RECORDS <= 0:
            return
        if len(self._memo_records) >= MEMO_RECORDS:
            self._memo_records.pop(next(iter(self._memo_records)))
        self._memo_records[name] = row

    # ================================================================ stats, clear, close
    def stats(self) -> CacheStats:
        """Entries and bytes as diskcache counts them; hits and misses over all processes."""
        self.flush_counters()
        entries = size = hits = misses = 0
        reader = self._open_reader()
        if reader is not None:
            try:
                settings = dict(reader.execute("SELECT key, value FROM Settings WHERE key IN ('count', 'size')").fetchall())
                entries, size = int(settings.get("count", 0)), int(settings.get("size", 0))
                size += reader.execute("SELECT coalesce(sum(length(value)), 0) FROM Cache WHERE mode = 1").fetchone()[0]
            except sqlite3.Error as exc:
                self._cache_error(exc)
        hits, misses = self._read_counters()
        return CacheStats(str(self.folder), self._marker_value(), entries, size, hits, misses)

    def _marker_value(self) -> str | None:
        try:
            return (self.folder / MARKER_NAME).read_text("utf-8").strip() or None
        except (OSError, UnicodeDecodeError):
            return None

    def clear(self) -> None:
        """Remove this store's cache, store id marker included (other processes see old or nothing)."""
        self._remove_data()
        _remove_tree(self.folder)
        self._checked_marker = self._disabled = False
        self.hits = self.misses = 0

    @staticmethod
    def clear_all(settings: CacheSettings) -> int:
        """Remove the caches of every store under the cache directory; returns how many."""
        base = settings.base()
        try:
            folders = [base / name for name in os.listdir(base) if len(name) == 32]
        except OSError:
            return 0
        for folder in folders:
            _remove_tree(folder)
        return len(folders)

    def flush_counters(self) -> None:
        """Add this process's hits and misses to the shared counters: one O_APPEND write of one line."""
        if not (self.hits or self.misses) or self._disabled or not self._checked_marker:
            return
        line = f"{self.hits} {self.misses}\n".encode()
        self.hits = self.misses = 0
        try:
            fd = os.open(self.folder / COUNTERS_NAME, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)
        except OSError as exc:
            self.notes.append(f"cache counters not saved: {exc}")

    def _read_counters(self) -> tuple[int, int]:
        """Sum of every process's (hits, misses); garbage lines are skipped. Compacts a long file
        (a count appended by another process during the compaction may be lost: they are statistics)."""
        path = self.folder / COUNTERS_NAME
        try:
            text = path.read_bytes().decode("ascii", "replace")
        except OSError:
            return 0, 0
        hits = misses = 0
        for line in text.splitlines():
            fields = line.split()
            if len(fields) == 2 and fields[0].isdigit() and fields[1].isdigit():
                hits, misses = hits + int(fields[0]), misses + int(fields[1])
        if len(text) > COUNTERS_COMPACT_SIZE:
            try:
                temp = path.with_name(f".{COUNTERS_NAME}.{os.getpid()}")
                temp.write_text(f"{hits} {misses}\n", "ascii")
                os.replace(temp, path)
            except OSError:
                pass
        return hits, misses

    def close(self) -> None:
        self.flush_counters()
        self._close_connections()
