"""What the read cache keeps and how (diskcache's `Disk`, in spirit): its settings and folder, the rows
it writes straight into diskcache's table, checksummed records, and the reader of bytes held in memory.

cache.py's StoreCache is the engine over these (transactions, misses, failure handling).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import msgpack

from .hashing import blake3, checksum16
from .validate import parse_size

DEFAULT_SIZE_LIMIT = 1 << 30
DEFAULT_MAX_OBJECT_SIZE = 4 << 20
CACHE_DIR_ENV = "IMSTORE_CACHE_DIR"
CACHE_SIZE_ENV = "IMSTORE_CACHE_SIZE"
NO_CACHE_ENV = "IMSTORE_NO_CACHE"

MARKER_NAME = "store-id"
COUNTERS_NAME = "counters"  # appended lines "hits misses": one write per process, no database write
COUNTERS_COMPACT_SIZE = 64 << 10
DATA_NAME = "data"
DB_NAME = "cache.db"  # diskcache's database file inside data/
OPEN_DEADLINE = 2.0  # seconds to keep retrying a racing creation before going without the cache
MEMO_BYTES = 64 << 20
MEMO_RECORDS = 100_000
REFRESH_AFTER = 86400.0  # seconds: an entry read this long after it was stored is stored again
ROW_FIELDS = 10  # key, version, seq, op, hash, size, time_ns, content_type, message, meta
# diskcache value modes (diskcache.core.MODE_RAW / MODE_BINARY): bytes inline or in a file.
MODE_RAW, MODE_BINARY = 1, 2


class CacheSettings(NamedTuple):
    """Where the cache lives and how big it may grow; `enabled=False` is --no-cache.

    (A NamedTuple rather than a frozen dataclass: cheaper to define at start-up.)"""

    enabled: bool = True
    directory: Path | None = None  # the base folder; None: platformdirs.user_cache_path("imstore")
    size_limit: int = DEFAULT_SIZE_LIMIT
    max_object_size: int = DEFAULT_MAX_OBJECT_SIZE
    memo_bytes: int = MEMO_BYTES  # object bytes a StoreCache keeps in memory (a serve worker has one per thread)

    @classmethod
    def from_env(cls, environ: dict | None = None) -> CacheSettings:
        """Settings from IMSTORE_NO_CACHE, IMSTORE_CACHE_DIR and IMSTORE_CACHE_SIZE."""
        env = os.environ if environ is None else environ
        directory = env.get(CACHE_DIR_ENV)
        size = env.get(CACHE_SIZE_ENV)
        return cls(
            enabled=env.get(NO_CACHE_ENV, "").strip().lower() in ("", "0", "false", "no"),
            directory=Path(directory).expanduser() if directory else None,
            size_limit=parse_size(size) if size else DEFAULT_SIZE_LIMIT,
        )

    def base(self) -> Path:
        if self.directory is not None:
            return Path(self.directory)
        from .paths import user_cache_path

        return user_cache_path("imstore")


def cache_folder(settings: CacheSettings, store_root: str | os.PathLike) -> Path:
    """The cache folder of the store at store_root: named by its resolved path."""
    resolved = os.path.realpath(os.path.expanduser(os.fspath(store_root)))
    return settings.base() / blake3(resolved.encode("utf-8", "surrogateescape")).hexdigest()[:32]


class CacheStats(NamedTuple):
    path: str
    store_id: str | None
    entries: int
    bytes: int
    hits: int
    misses: int


class CachedObjectReader:
    """An object held in memory whose bytes were checked against its id.

    Same interface as objects.ObjectReader (read/chunks/verify/size/local_file);
    local_file() is None because there is no file to sendfile from.
    """

    location = None

    def local_file(self) -> None:
        return None

    def __init__(self, object_id: str, data: bytes):
        self.object_id = object_id
        self.data = data
        self.size = len(data)

    def read(self) -> bytes:
        return self.data

    def chunks(self, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        view = memoryview(self.data)
        for start in range(0, len(view), chunk_size):
            yield view[start : start + chunk_size]

    def verify(self) -> None:
        return None  # checked when it was taken from the cache


# One statement for many small entries (see set_many): the row diskcache's set() writes for a
# str key and a bytes value kept in the database (raw key, MODE_RAW, no file, size 0).
UPSERT = (
    "INSERT INTO Cache(key, raw, store_time, expire_time, access_time, access_count, tag, size, mode, filename, value)"
    " VALUES (?, 1, ?, NULL, ?, 0, NULL, 0, 1, NULL, ?)"
    " ON CONFLICT(key, raw) DO UPDATE SET store_time = excluded.store_time, access_time = excluded.access_time,"
    " value = excluded.value WHERE filename IS NULL"
)


def set_many(cache, entries: list[tuple[str, bytes]]) -> None:
    """diskcache's set() for many entries in one transaction: one upsert and one cull in all.

    set() runs five statements per entry (select, insert, expiry and size checks);
    filling three entries for every put took more of a server's CPU than the put.
    This writes the very rows set() would, in the table this module already reads
    directly; values diskcache keeps in files still go through set().
    """
    now = time.time()
    last = dict(entries)  # a name held twice: its later value, as successive set() calls leave it
    with cache.transact():
        # A row whose value diskcache keeps in a file: set() replaces it (and removes the file),
        # where the upsert would leave it as it is.
        query = f"SELECT key FROM Cache WHERE raw = 1 AND filename IS NOT NULL AND key IN ({', '.join('?' * len(last))})"
        in_files = {name for (name,) in cache._con.execute(query, list(last))}
        small = [(name, now, now, value) for name, value in last.items() if len(value) < cache.disk_min_file_size and name not in in_files]
        cache._con.executemany(UPSERT, small)
        for name, value in last.items():
            if len(value) >= cache.disk_min_file_size or name in in_files:
                cache.set(name, value)
        # Keep the size limit as set() does: at most cull_limit old entries per entry written.
        # Not cull(): inside one transaction the database file does not shrink as rows go, so
        # its loop (volume still over the limit) would delete every entry, these ones too.
        with cache._transact() as (sql, cleanup):  # nested: the same transaction
            cache._cull(now, sql, cleanup, cache.cull_limit * len(small))


def remove_tree(path: Path) -> None:
    """Move path aside (atomic: racing processes see all of it or nothing) and delete it."""
    aside = path.with_name(f".removed-{path.name}-{os.getpid()}-{os.urandom(4).hex()}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return
    except OSError:
        aside = path
    if aside.is_dir() and not aside.is_symlink():
        shutil.rmtree(aside, ignore_errors=True)
    else:
        try:
            aside.unlink()
        except OSError:
            pass


def is_row_of(row: tuple | None, key: str, version: int | None = None) -> bool:
    """Is row an index row (see store.Version.from_row) of key (and version)? Guards against mix-ups."""
    return (
        row is not None and len(row) == ROW_FIELDS and row[0] == key and isinstance(row[1], int) and (version is None or row[1] == version)
    )


def encode_record(value: list) -> bytes:
    """msgpack with a 16-byte BLAKE3 checksum in front, so garbage is never taken for a record."""
    payload = msgpack.packb(value, use_bin_type=True)
    return checksum16(payload) + payload


def decode_record(blob: bytes) -> tuple | None:
    if len(blob) < 17 or checksum16(blob[16:]) != blob[:16]:
        return None
    try:
        value = msgpack.unpackb(blob[16:], raw=False)
    except Exception:  # noqa: BLE001 -- checksummed but undecodable: treat as garbage
        return None
    return tuple(value) if isinstance(value, list) else None
