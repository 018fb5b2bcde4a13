"""Batch import: a directory, a tar or JSON lines into one atomic batch.

Sources yield `SourceItem`s (key, where the bytes are, and a name for messages).
`import_source` reads and hashes them in parallel (`jobs` threads; the hashing
and file reads release the GIL), appends new small objects to one pack, writes
very large ones as loose objects, and hands the batch to `Store.import_batch`,
which commits it as one log frame. Nothing is visible until that frame is
durable, so an error, a kill or a crash leaves all of the batch or none of it.

Decisions (see also README):
- directory keys are the relative paths with '/'; symlinks are skipped with a
  warning unless follow_symlinks, and then followed only when their target is
  inside SOURCE; FIFOs, sockets and devices are skipped with a warning;
- tar member names lose leading './' and become keys as they are, so '../x' and
  '/abs/x' are valid keys (keys are never paths; export refuses them);
- JSON lines: one object per line with "key" and exactly one of "content"
  (UTF-8 text), "content_b64" or "path" (relative to the JSONL file's directory,
  or to the working directory for stdin); optional "content_type", "meta",
  "message"; any other field is an error (it is most likely a typo);
- a key that appears twice in one source gets two versions, in source order.
"""

from __future__ import annotations

import base64
import io
import json
import lzma
import os
import stat
import tarfile
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

from .errors import ImstoreError, InvalidInput, InvalidKey, from_os_error
from .hashing import blake3
from .objects import CHUNK_SIZE
from .packs import PackWriter
from .statcache import CACHE_NAME, FileStat, StatCache, file_stat
from .store import BatchItem, BatchResult, Store
from .validate import validate_key, validate_meta

__all__ = ["import_source", "ImportSummary", "SourceItem", "LOOSE_MIN"]

# Files at least this big are written as loose objects (streamed), not into the pack.
LOOSE_MIN = 8 << 20
# What a damaged or truncated (compressed) tar raises while it is read.
TAR_ERRORS = (tarfile.TarError, EOFError, OSError, ValueError, zlib.error, lzma.LZMAError)
JSONL_SUFFIXES = (".jsonl", ".ndjson")
JSONL_FIELDS = {"key", "content", "content_b64", "path", "content_type", "meta", "message"}

Progress = Callable[[int, int, "int | None", "int | None"], None]


class ItemError(InvalidInput):
    """One source item cannot be imported: exit 2 like any bad input (aborts unless errors are skipped)."""


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
class SourceItem:
    """One thing to import: exactly one of path (a file), data (bytes) or stream (a tar member)."""

    key: str
    where: str
    size: int | None = None
    path: str | None = None
    stat: FileStat | None = None
    data: bytes | None = None
    stream: BinaryIO | None = None
    known_hash: str | None = None
    content_type: str | None = None
    meta: dict = field(default_factory=dict)
    message: str | None = None


@dataclass
class Prepared:
    """An item's content, hashed: bytes for the pack, or already stored (loose or deduplicated)."""

    hash: str
    size: int
    data: bytes | None = None
    stored: bool = False  # a loose object this import just wrote
    read: bool = True  # False: known from the stat cache or a tar hard link


# ============================================================ sources
class Source:
    """Items of one import source and, when known up front, their count and bytes."""

    total_files: int | None = None
    total_bytes: int | None = None
    cache_root: str | None = None

    def __init__(self, warn: Callable[[str], None]):
        self.warn = warn

    def items(self) -> Iterator[SourceItem | ItemError]:
        raise NotImplementedError


class DirectorySource(Source):
    """Regular files under a directory, walked in sorted order before anything is read."""

    def __init__(self, root: str, warn, follow_symlinks: bool):
        super().__init__(warn)
        self.root = os.path.realpath(root)
        self.cache_root = self.root
        self.follow_symlinks = follow_symlinks
        self.seen_ns = time.time_ns()
        # (key, path, stat) per file, or an ItemError: plain tuples, since a tree may hold millions of files
        self.entries: list[tuple[str, str, FileStat] | ItemError] = []
        self._walk(self.root, "", {_dir_identity(self.root)})
        files = [entry for entry in self.entries if isinstance(entry, tuple)]
        self.total_files = len(files)
        self.total_bytes = sum(entry[2][0] for entry in files)

    def items(self) -> Iterator[SourceItem | ItemError]:
        for entry in self.entries:
            yield entry if isinstance(entry, ItemError) else self.item(entry)

    @staticmethod
    def item(entry: tuple[str, str, FileStat], known_hash: str | None = None) -> SourceItem:
        name, path, fstat = entry
        return SourceItem(key=name, where=name, size=fstat[0], path=path, stat=fstat, known_hash=known_hash)

    def _walk(self, directory: str, relative: str, visiting: set) -> None:
        try:
            with os.scandir(directory) as listing:
                entries = sorted(listing, key=lambda entry: entry.name)
        except OSError as exc:
            self.entries.append(ItemError(f"{relative or '.'}: cannot list the directory: {exc.strerror or exc}"))
            return
        for entry in entries:
            name = f"{relative}{entry.name}"
            try:
                if entry.is_symlink():
                    self._symlink(entry, name, visiting)
                elif entry.is_dir(follow_symlinks=False):
                    # Ancestors are tracked only when following links: only then can a walk loop.
                    inner = visiting | {_dir_identity(entry.path)} if self.follow_symlinks else visiting
                    self._walk(entry.path, name + "/", inner)
                elif entry.is_file(follow_symlinks=False):
                    self._file(entry.path, name, entry.stat(follow_symlinks=False))
                else:
                    self.warn(f"{name}: not a regular file (a FIFO, socket or device); skipped")
            except OSError as exc:
                self.entries.append(ItemError(f"{name}: {exc.strerror or exc}"))

    def _file(self, path: str, name: str, result: os.stat_result) -> None:
        self.entries.append((name, path, file_stat(result)))

    def _symlink(self, entry: os.DirEntry, name: str, visiting: set) -> None:
        if not self.follow_symlinks:
            self.warn(f"{name}: a symlink; not followed (use --follow-symlinks to follow links inside SOURCE)")
            return
        target = os.path.realpath(entry.path)
        if os.path.commonpath([self.root, target]) != self.root:
            self.warn(f"{name}: a symlink to {target}, outside SOURCE; skipped")
            return
        try:
            result = os.stat(target)
        except OSError:
            self.warn(f"{name}: a broken symlink; skipped")
            return
        if stat.S_ISDIR(result.st_mode):
            identity = (result.st_dev, result.st_ino)
            if identity in visiting:
                self.warn(f"{name}: a symlink loop; skipped")
                return
            self._walk(target, name + "/", visiting | {identity})
        elif stat.S_ISREG(result.st_mode):
            self._file(target, name, result)
        else:
            self.warn(f"{name}: a symlink to a special file; skipped")


def _dir_identity(path: str) -> tuple[int, int]:
    result = os.stat(path)
    return result.st_dev, result.st_ino


class TarSource(Source):
    """Members of a tar (any compression tarfile reads; a stream when it comes from stdin)."""

    def __init__(self, warn, *, path: str | None = None, stream: BinaryIO | None = None):
        super().__init__(warn)
        self.path, self.stream = path, stream

    def items(self) -> Iterator[SourceItem | ItemError]:
        linked: dict[str, SourceItem] = {}
        try:
            archive = tarfile.open(self.path, "r:*") if self.path else tarfile.open(fileobj=self.stream, mode="r|*")
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise InvalidInput(f"not a readable tar archive: {exc}") from None
        member_name = "(start of archive)"
        try:
            with archive:
                for member in archive:
                    member_name = _member_key(member.name)
                    if member.isdir() or member_name in ("", "."):
                        continue
                    if member.isreg():
                        item = SourceItem(key=member_name, where=f"tar member {member.name}", size=member.size)
                        item.stream = archive.extractfile(member)
                        linked[member_name] = item
                        yield item
                    elif member.islnk() and _member_key(member.linkname) in linked:
                        earlier = linked[_member_key(member.linkname)]
                        where = f"tar member {member.name}"
                        yield SourceItem(key=member_name, where=where, size=earlier.size, known_hash=earlier.known_hash)
                    elif member.issym():
                        self.warn(f"tar member {member.name}: a symlink; skipped")
                    else:
                        self.warn(f"tar member {member.name}: not a regular file; skipped")
        except TAR_ERRORS as exc:
            raise InvalidInput(f"the tar archive is damaged after {member_name}: {exc}") from None


def _member_key(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    return name


class JsonLinesSource(Source):
    """One JSON object per line (see the module docstring for the fields)."""

    def __init__(self, warn, stream: BinaryIO, base_dir: str, name: str):
        super().__init__(warn)
        self.stream, self.base_dir, self.name = stream, base_dir, name

    def items(self) -> Iterator[SourceItem | ItemError]:
        for number, line in enumerate(self.stream, 1):
            if not line.strip():
                continue
            try:
                yield self._parse(line, f"{self.name} line {number}")
            except ItemError as exc:
                yield exc

    def _parse(self, line: bytes, where: str) -> SourceItem:
        try:
            record = json.loads(line)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ItemError(f"{where}: not valid JSON ({exc})") from None
        if not isinstance(record, dict):
            raise ItemError(f"{where}: a line must be a JSON object")
        unknown = set(record) - JSONL_FIELDS
        if unknown:
            raise ItemError(f"{where}: unknown fields {sorted(unknown)} (allowed: {sorted(JSONL_FIELDS)})")
        key = record.get("key")
        if not isinstance(key, str):
            raise ItemError(f"{where}: \"key\" must be a string")
        sources = [name for name in ("content", "content_b64", "path") if name in record]
        if len(sources) != 1:
            raise ItemError(f"{where}: give exactly one of \"content\", \"content_b64\" or \"path\"")
        item = SourceItem(key=key, where=where)
        value = record[sources[0]]
        if not isinstance(value, str):
            raise ItemError(f"{where}: \"{sources[0]}\" must be a string")
        try:
            if sources[0] == "content":
                item.data = value.encode("utf-8")
            elif sources[0] == "content_b64":
                item.data = base64.b64decode(value, validate=True)
            else:
                item.path = os.path.join(self.base_dir, value)
                result = os.stat(item.path)
                if not stat.S_ISREG(result.st_mode):
                    raise ItemError(f"{where}: {value} is not a regular file")
                item.size = result.st_size
        except (UnicodeEncodeError, ValueError) as exc:
            raise ItemError(f"{where}: bad {sources[0]} ({exc})") from None
        except OSError as exc:
            raise ItemError(f"{where}: cannot read {value}: {exc.strerror or exc}") from None
        if item.data is not None:
            item.size = len(item.data)
        content_type, meta, message = record.get("content_type"), record.get("meta") or {}, record.get("message")
        if content_type is not None and (not isinstance(content_type, str) or not content_type.strip() or len(content_type) > 255):
            raise ItemError(f"{where}: \"content_type\" must be text of 1 to 255 characters")
        if message is not None and not isinstance(message, str):
            raise ItemError(f"{where}: \"message\" must be a string")
        try:
            item.meta = validate_meta(meta)
        except InvalidInput as exc:
            raise ItemError(f"{where}: {exc}") from None
        item.content_type, item.message = content_type, message
        return item


class _PrefixedRaw(io.RawIOBase):
    """A raw stream that yields `first` and then the rest of `stream` (after sniffing stdin)."""

    def __init__(self, first: bytes, stream: BinaryIO):
        self._first, self._stream = first, stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self._first:
            count = min(len(buffer), len(self._first))
            buffer[:count] = self._first[:count]
            self._first = self._first[count:]
            return count
        data = self._stream.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def open_source(source: str, stdin: BinaryIO | None, warn, follow_symlinks: bool) -> Source:
    """The Source for SOURCE: a directory, a .jsonl/.ndjson file, a tar, or '-' (a tar or JSONL stream)."""
    if source == "-":
        if stdin is None:
            raise InvalidInput("stdin is closed: pipe a tar or JSON lines in")
        first = stdin.read(1)
        if not first:
            raise InvalidInput("stdin is empty: pipe a tar or JSON lines in")
        stream = io.BufferedReader(_PrefixedRaw(first, stdin), CHUNK_SIZE)
        if first == b"{":
            return JsonLinesSource(warn, stream, os.getcwd(), "stdin")
        return TarSource(warn, stream=stream)
    if os.path.isdir(source):
        return DirectorySource(source, warn, follow_symlinks)
    if not os.path.exists(source):
        raise InvalidInput(f"no such file or directory: {source}")
    if source.endswith(JSONL_SUFFIXES):
        try:
            handle = open(source, "rb")
        except OSError as exc:
            raise InvalidInput(f"cannot read {source}: {exc.strerror}") from None
        return JsonLinesSource(warn, handle, os.path.dirname(os.path.abspath(source)), os.path.basename(source))
    try:
        is_tar = os.path.isfile(source) and tarfile.is_tarfile(source)
    except OSError as exc:
        raise InvalidInput(f"cannot read {source}: {exc.strerror}") from None
    if not is_tar:
        raise InvalidInput(f"{source} is not a directory, a tar archive or a .jsonl/.ndjson file")
    return TarSource(warn, path=source)


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
    try:
        if item.size is not None and item.size >= LOOSE_MIN:
            return _store_loose(iter(lambda: item.stream.read(CHUNK_SIZE), b""), store)
        data = item.stream.read()
    except TAR_ERRORS as exc:
        raise InvalidInput(f"the tar archive is damaged in {item.where}: {exc or type(exc).__name__}") from None
    return Prepared(blake3(data).hexdigest(), len(data), data)


def _store_loose(chunks, store: Store) -> Prepared:
    object_id, size, created = store.objects.store_stream(chunks)
    return Prepared(object_id, size, None, stored=created)


class _Batch:
    """Turns source items into batch items, writing new objects to one pack."""

    # Files are handed to the reader threads in groups: one future per file costs more than a small read.
    GROUP_FILES = 64
    GROUP_BYTES = 4 << 20

    def __init__(self, store: Store, summary: ImportSummary, *, prefix: str, jobs: int, skip_errors: bool, progress):
        self.store, self.summary, self.prefix, self.jobs = store, summary, prefix, jobs
        self.skip_errors, self.progress = skip_errors, progress
        self.pack = PackWriter(store.root / "objects" / "pack")
        self.items: list[BatchItem] = []
        self.not_written = 0  # bytes of items whose object already existed
        self.same_as_latest = 0  # items equal to their key's latest version when the import began
        self.fast_unchanged = 0  # unchanged files recognised by the stat cache alone (not in items)
        self.latest: dict[str, tuple] = {}
        self.cache: StatCache | None = None
        self.seen_ns = 0
        self._done_bytes = 0
        self._objects_root = str(store.objects.root)
        self._loose_shards: set[str] = set()

    def fail(self, error: ImstoreError) -> None:
        if not self.skip_errors:
            raise error
        self.summary.skip(f"{error}; skipped")

    def run(self, source: Source) -> None:
        self.store.packs.refresh()
        try:
            self._loose_shards = {name for name in os.listdir(self._objects_root) if len(name) == 2}
        except OSError as exc:
            raise from_os_error(exc, "listing objects") from None
        if isinstance(source, DirectorySource):
            self.cache = StatCache(self.store.root / CACHE_NAME, source.cache_root)
            self.seen_ns = source.seen_ns
            self.latest = self.store.latest_contents(self.prefix + entry[0] for entry in source.entries if isinstance(entry, tuple))
            stream = iter(self._changed_entries(source))
        else:
            stream = source.items()
        if self.jobs > 1:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(self.jobs, thread_name_prefix="imstore-import") as pool:
                self._consume(stream, source, pool)
        else:
            self._consume(stream, source, None)

    def _changed_entries(self, source: DirectorySource) -> list[SourceItem | ItemError]:
        """Items to process; files whose stat and cached hash match their key's latest version are only counted.

        This is the re-import fast path: no read, no object lookup, no batch item for an unchanged file.
        """
        pending: list[SourceItem | ItemError] = []
        lookup, latest, prefix = self.cache.lookup, self.latest, self.prefix
        for entry in source.entries:
            if isinstance(entry, ItemError):
                pending.append(entry)
                continue
            known = lookup(entry[1], entry[2])
            if known is not None and latest.get(prefix + entry[0]) == (known, None, {}):
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
            item.known_hash = self.cache.lookup(item.path, item.stat)
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
        """Is the object stored already (in this pack, loose, or in a pack)? No pathlib: this runs per file."""
        if object_id in self.pack:
            return True
        if object_id[:2] in self._loose_shards and os.path.exists(f"{self._objects_root}/{object_id[:2]}/{object_id[2:]}"):
            return True
        return self.store.packs.contains(object_id)

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
        if self.cache is not None and item.stat is not None and prepared.read:
            self.cache.remember(item.path, item.stat, prepared.hash, self.seen_ns)
        self.items.append(BatchItem(key, prepared.hash, prepared.size, item.content_type, item.meta, item.message))


def _read_group(items: list[SourceItem], store: Store) -> list[Prepared | ItemError]:
    """Runs in a reader thread: read and hash a group of files."""
    return [_attempt(_read_file, item, store) for item in items]


def _attempt(function, item: SourceItem, store: Store) -> Prepared | ItemError:
    try:
        return function(item, store)
    except ItemError as exc:
        return exc


class _Thread:
    """A function running on a thread, with its result (or exception) collected by result()."""

    def __init__(self, function):
        import threading

        self._value = self._error = None
        self._thread = threading.Thread(target=self._run, args=(function,), name="imstore-statcache", daemon=True)
        self._thread.start()

    def _run(self, function) -> None:
        try:
            self._value = function()
        except BaseException as exc:  # handed to the caller by result()
            self._error = exc

    def result(self):
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value


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
    batch = _Batch(store, summary, prefix=prefix, jobs=max(1, jobs or os.cpu_count() or 1), skip_errors=skip_errors, progress=progress)
    try:
        batch.run(opened)
    except BaseException:
        batch.pack.abort()
        raise
    finally:
        stream = getattr(opened, "stream", None)
        if stream is not None and source != "-":
            stream.close()
    # The stat cache only records what files hashed to, which holds whether or not the batch commits,
    # so it is saved on a thread while the commit waits for its fsyncs.
    saving = _Thread(batch.cache.save) if batch.cache is not None else None
    try:
        if batch.nothing_new:
            # Nothing to commit: the import is a no-op as of the moment it read the index.
            result = BatchResult((), len(batch.items), sum(item.size for item in batch.items))
            batch.pack.abort()
        else:
            result = store.import_batch(batch.items, pack=batch.pack, message=message)
    except BaseException:
        batch.pack.abort()
        raise
    finally:
        problem = saving.result() if saving is not None else None
        if problem:
            summary.warnings.append(problem)
    summary.pack = batch.pack.path.name if batch.pack.path else None
    summary.added = len(result.records)
    summary.unchanged = result.unchanged + batch.fast_unchanged
    summary.bytes_saved = batch.not_written - result.unchanged_bytes
    return summary
