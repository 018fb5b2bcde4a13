"""Batch import: any source (see sources.py) into one atomic batch.

`import_source` reads and hashes the source's items in parallel (`jobs` reader
threads, files handed out in groups), appends new small objects to one pack,
writes very large ones as loose objects, and hands the batch to
`Store.import_batch`, which commits it as one log frame. Nothing is visible
until that frame is durable, so an error, a kill or a crash leaves all of the
batch or none of it. A key that appears twice in one source gets two versions,
in source order.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import BinaryIO

from .errors import ImstoreError, InvalidInput, InvalidKey
from .fsio import CHUNK_SIZE
from .hashing import blake3
from .sources import TAR_ERRORS, DirectorySource, ItemError, Source, SourceItem, open_source
from .statcache import StatCache
from .store import BatchItem, BatchResult, Store
from .validate import validate_key

__all__ = ["import_source", "import_items", "ImportSummary", "LOOSE_MIN"]

# Files at least this big are written as loose objects (streamed), not into the pack.
LOOSE_MIN = 8 << 20

Progress = Callable[[int, int, "int | None", "int | None"], None]


@dataclass
class ImportSummary:
    """What an import did (the CLI prints it; `--json` uses these field names)."""

    added: int = 0
    unchanged: int = 0
    skipped: int = 0
    files: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    bytes_saved: int = 0
    pack: str | None = None
    warnings: list[str] = field(default_factory=list)

    def skip(self, message: str) -> None:
        """A source item left out (a symlink, a special file, or an error under --skip-errors)."""
        self.warnings.append(message)
        self.skipped += 1

    def to_json(self) -> dict:
        return {
            "added": self.added,
            "unchanged": self.unchanged,
            "skipped": self.skipped,
            "files": self.files,
            "bytes_read": self.bytes_read,
            "bytes_written": self.bytes_written,
            "bytes_saved": self.bytes_saved,
            "pack": self.pack,
            "warnings": self.warnings,
        }


@dataclass
class Prepared:
    """An item's content, hashed: bytes for the pack, or already stored (loose or deduplicated)."""

    hash: str
    size: int
    data: bytes | None = None
    stored: bool = False  # a loose object this import just wrote
    read: bool = True  # False: known from the stat cache or a tar hard link


# ============================================================ reading and hashing
def _read_file(item: SourceItem, store: Store) -> Prepared:
    """Runs in a worker thread: small files are read whole, large ones stored loose while read.

    Plain fds rather than file objects: for thousands of small files the Python overhead is the cost.
    """
    try:
        fd = os.open(item.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            if item.size is not None and item.size >= LOOSE_MIN:
                return _store_loose(iter(lambda: os.read(fd, CHUNK_SIZE), b""), store)
            data = os.read(fd, (item.size or 0) + 1)
            while True:  # short reads, or the file grew since it was listed
                more = os.read(fd, CHUNK_SIZE)
                if not more:
                    break
                data += more
        finally:
            os.close(fd)
    except OSError as exc:
        raise ItemError(f"{item.where}: cannot read: {exc.strerror or exc}") from None
    return Prepared(blake3(data).hexdigest(), len(data), data)


def _read_inline(item: SourceItem, store: Store) -> Prepared:
    """Content given inline (JSONL) or as a tar member stream, read in the main thread."""
    if item.data is not None:
        return Prepared(blake3(item.data).hexdigest(), len(item.data), item.data)
    assert item.stream is not None
    if item.size is not None and item.size >= LOOSE_MIN:
        return _store_loose(_member_chunks(item), store)
    try:
        data = item.stream.read()
    except TAR_ERRORS as exc:
        raise InvalidInput(f"the tar archive is damaged in {item.where}: {exc or type(exc).__name__}") from None
    return Prepared(blake3(data).hexdigest(), len(data), data)


def _member_chunks(item: SourceItem):
    """A tar member's bytes; the archive's own failures are InvalidInput here, so the object writer
    never takes a damaged archive (a gzip error is an OSError) for a failing disk."""
    while True:
        try:
            chunk = item.stream.read(CHUNK_SIZE)
        except TAR_ERRORS as exc:
            raise InvalidInput(f"the tar archive is damaged in {item.where}: {exc or type(exc).__name__}") from None
        if not chunk:
            return
        yield chunk


def _store_loose(chunks, store: Store) -> Prepared:
    object_id, size, created = store.objects.add_stream(chunks)
    return Prepared(object_id, size, None, stored=created)


class _Batch:
    """Turns source items into batch items, writing new objects to one pack."""

    # Files are handed to the reader threads in groups: one future per file costs more than a small read.
    GROUP_FILES = 64
    GROUP_BYTES = 4 << 20

    def __init__(self, store: Store, summary: ImportSummary, *, prefix: str, jobs: int, skip_errors: bool, progress):
        self.store, self.summary, self.prefix, self.jobs = store, summary, prefix, jobs
        self.skip_errors, self.progress = skip_errors, progress
        self.pack = store.objects.new_pack()
        self.items: list[BatchItem] = []
        self.not_written = 0  # bytes of items whose object already existed
        self.same_as_latest = 0  # items equal to their key's latest version when the import began
        self.fast_unchanged = 0  # unchanged files recognised by the stat cache alone (not in items)
        self.latest: dict[str, tuple] = {}
        self.read_position: tuple[int, str] | None = None  # log position the latest versions were read at
        self.cache: StatCache | None = None
        self.seen_ns = 0
        self._done_bytes = 0

    def fail(self, error: ImstoreError) -> None:
        if not self.skip_errors:
            raise error
        self.summary.skip(f"{error}; skipped")

    def run(self, source: Source) -> None:
        self.store.objects.refresh()
        if isinstance(source, DirectorySource):
            self.cache = StatCache(self.store.root, source.cache_root)
            self.seen_ns = source.seen_ns
            position = self.store.log_position()
            # The store has not changed since an import left every cached file its key's latest: no index lookups.
            trusted = self.cache.all_latest_at(position, self.prefix)
            if not trusted:
                self.latest = self.store.latest_contents(self.prefix + entry[0] for entry in source.entries if isinstance(entry, tuple))
            pending = self._changed_entries(source, trusted)
            if trusted:
                self.latest = self.store.latest_contents(self.prefix + item.key for item in pending if isinstance(item, SourceItem))
            # Nothing committed later means every file was its key's latest at this position (if it held still).
            self.read_position = position if self.store.log_position() == position else None
            stream, work = iter(pending), bool(pending)
        else:
            stream, work = source.items(), True
        if self.jobs > 1 and work:  # (an unchanged tree needs no threads: concurrent.futures costs ~8 ms to import)
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(self.jobs, thread_name_prefix="imstore-import") as pool:
                self._consume(stream, source, pool)
        else:
            self._consume(stream, source, None)

    def _changed_entries(self, source: DirectorySource, trusted: bool) -> list[SourceItem | ItemError]:
        """Items to process; files whose stat and cached hash match their key's latest version are only counted.

        This is the re-import fast path: no read, no object lookup, no batch item for an unchanged file.
        trusted: the cache's hashes are the keys' latest contents (StatCache.all_latest_at), so a stat match is enough.
        """
        pending: list[SourceItem | ItemError] = []
        lookup, confirm, latest, prefix = self.cache.lookup, self.cache.confirm, self.latest, self.prefix
        for entry in source.entries:
            if isinstance(entry, ItemError):
                pending.append(entry)
                continue
            known = lookup(entry[0], entry[2])
            if known is not None and (trusted or latest.get(prefix + entry[0]) == (known, None, {})):
                confirm(entry[0])
                self.fast_unchanged += 1
                self._done_bytes += entry[2][0]
                continue
            pending.append(source.item(entry, known))
        self.summary.files += self.fast_unchanged
        return pending

    @property
    def nothing_new(self) -> bool:
        """Every item equals its key's latest version and no object was written: no batch to commit."""
        return self.same_as_latest == len(self.items) and len(self.pack) == 0 and self.summary.bytes_written == 0

    def _consume(self, stream, source: Source, pool) -> None:
        """Keep a bounded window of groups in flight; finish them strictly in source order."""
        window: deque = deque()
        group: list[SourceItem] = []
        group_bytes = 0

        def submit_group() -> None:
            nonlocal group, group_bytes
            if group:
                window.append((group, pool.submit(_read_group, group, self.store) if pool else _read_group(group, self.store)))
                group, group_bytes = [], 0

        for item in stream:
            ready = self._start(item)
            if ready is None:
                group.append(item)
                group_bytes += item.size or 0
                if len(group) >= self.GROUP_FILES or group_bytes >= self.GROUP_BYTES:
                    submit_group()
            else:
                submit_group()
                window.append(([item], [ready]))
            while len(window) > self.jobs * 2:
                self._finish_group(*window.popleft(), source)
        submit_group()
        while window:
            self._finish_group(*window.popleft(), source)

    def _start(self, item) -> Prepared | ItemError | None:
        """What is known about item without reading a file: its result, or None (a file to read)."""
        if isinstance(item, ItemError):
            return item
        try:
            validate_key(self.prefix + item.key)
        except InvalidKey as exc:
            return ItemError(f"{item.where}: {exc}")
        if item.known_hash is None and self.cache is not None and item.stat is not None:
            item.known_hash = self.cache.lookup(item.key, item.stat)
        if item.known_hash is not None:
            return Prepared(item.known_hash, item.size or 0, read=False)
        if item.path is not None:
            return None
        prepared = _attempt(_read_inline, item, self.store)
        if isinstance(prepared, Prepared):
            item.known_hash = prepared.hash  # a later tar hard link to this member reuses it
        return prepared

    def _finish_group(self, items: list, pending, source: Source) -> None:
        results = pending if isinstance(pending, list) else pending.result()
        for item, prepared in zip(items, results, strict=True):
            self._finish(item, prepared, source)

    def _finish(self, item, prepared, source: Source) -> None:
        if isinstance(prepared, ItemError):
            self.fail(prepared)
            return
        key = self.prefix + item.key
        if not prepared.read and not self._unchanged(key, item, prepared.hash) and not self._have(prepared.hash):
            prepared = _attempt(_read_file, item, self.store)  # the cached hash names an object we no longer have
            if isinstance(prepared, ItemError):
                self.fail(prepared)
                return
        self._store(item, key, prepared)
        self.summary.files += 1
        if self.progress is not None:
            self._done_bytes += prepared.size
            self.progress(self.summary.files, self._done_bytes, source.total_files, source.total_bytes)

    def _unchanged(self, key: str, item: SourceItem, object_id: str) -> bool:
        return self.latest.get(key) == (object_id, item.content_type, item.meta)

    def _have(self, object_id: str) -> bool:
        """Is the object stored already (in this pack, loose, or in a pack)?"""
        return object_id in self.pack or self.store.objects.exists(object_id)

    def _store(self, item: SourceItem, key: str, prepared: Prepared) -> None:
        summary = self.summary
        unchanged = self._unchanged(key, item, prepared.hash)
        self.same_as_latest += unchanged
        if prepared.read:
            summary.bytes_read += prepared.size
        if prepared.stored:
            summary.bytes_written += prepared.size
        elif prepared.data is not None and not unchanged and not self._have(prepared.hash):
            self.pack.add(prepared.hash, prepared.data)
            summary.bytes_written += prepared.size
        else:
            self.not_written += prepared.size
        if self.cache is not None and item.stat is not None:
            if prepared.read:
                self.cache.remember(item.key, item.stat, prepared.hash, self.seen_ns)
            self.cache.confirm(item.key)
        self.items.append(BatchItem(key, prepared.hash, prepared.size, item.content_type, item.meta, item.message))


def _read_group(items: list[SourceItem], store: Store) -> list[Prepared | ItemError]:
    """Runs in a reader thread: read and hash a group of files."""
    return [_attempt(_read_file, item, store) for item in items]


def _attempt(function, item: SourceItem, store: Store) -> Prepared | ItemError:
    try:
        return function(item, store)
    except ItemError as exc:
        return exc


def _latest_position(result: BatchResult | None, read_position: tuple[int, str] | None) -> tuple[int, str] | None:
    """The position at which every file of the import is its key's latest, or None.

    The files the stat cache recognised were checked against the index at read_position and are not in the
    batch, so the claim only holds if nothing else was committed between that position and this batch.
    """
    if result is None or result.position is None or read_position is None:
        return None
    first = result.records[0] if result.records else None
    start = (first.seq - 1, first.prev.hex()) if first is not None else tuple(result.position)
    return tuple(result.position) if start == tuple(read_position) else None


# ============================================================ the one entry point
def import_source(
    store: Store,
    source: str,
    *,
    stdin: BinaryIO | None = None,
    prefix: str = "",
    jobs: int | None = None,
    message: str | None = None,
    skip_errors: bool = False,
    follow_symlinks: bool = False,
    progress: Progress | None = None,
) -> ImportSummary:
    """Import SOURCE into store as one atomic batch; returns the summary.

    Raises (and commits nothing) on the first bad item unless skip_errors, which
    turns bad items into warnings and imports the rest, still atomically.
    """
    summary = ImportSummary()
    opened = open_source(source, stdin, summary.skip, follow_symlinks)
    return import_items(
        store, opened, summary, prefix=prefix, jobs=jobs, message=message, skip_errors=skip_errors, progress=progress,
        close_stream=source != "-",
    )  # fmt: skip


def import_items(
    store: Store,
    opened: Source,
    summary: ImportSummary,
    *,
    prefix: str = "",
    jobs: int | None = None,
    message: str | None = None,
    skip_errors: bool = False,
    progress: Progress | None = None,
    close_stream: bool = True,
    before_commit: Callable[[], None] | None = None,
) -> ImportSummary:
    """Import the items of an opened source as one atomic batch (summary: the one its warn callback fills).

    before_commit runs once every item is read and before anything is committed: the server uses it to
    read a request body to its very end, so a body that breaks off after the last item commits nothing.
    """
    batch = _Batch(store, summary, prefix=prefix, jobs=max(1, jobs or os.cpu_count() or 1), skip_errors=skip_errors, progress=progress)
    try:
        batch.run(opened)
        if before_commit is not None:
            before_commit()
    except BaseException:
        batch.pack.abort()
        raise
    finally:
        stream = getattr(opened, "stream", None)
        if stream is not None and close_stream:
            stream.close()
    result = None
    try:
        if batch.nothing_new:
            # Nothing to commit: the import is a no-op as of the moment it read the index.
            result = BatchResult((), len(batch.items), sum(item.size for item in batch.items), batch.read_position)
            batch.pack.abort()
        else:
            result = store.import_batch(batch.items, pack=batch.pack, message=message)
    except BaseException:
        batch.pack.abort()
        raise
    finally:
        if batch.cache is not None:
            # The hashes hold whether or not the batch committed; "all latest at" only once it did (failed files are
            # never confirmed, so save() drops them).
            problem = batch.cache.save(_latest_position(result, batch.read_position), prefix)
            if problem:
                summary.warnings.append(problem)
    summary.pack = batch.pack.path.name if batch.pack.path else None
    summary.added = len(result.records)
    summary.unchanged = result.unchanged + batch.fast_unchanged
    summary.bytes_saved = batch.not_written - result.unchanged_bytes
    return summary
