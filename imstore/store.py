"""Store: the library API. Composes objects, log and index; owns the layout.

Nothing here prints: what the user should hear about (a repaired torn tail, a
rebuilt index) is collected in `Store.warnings` for the CLI or server to show.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, NamedTuple

import msgpack

from .cache import CachedObjectReader, CacheSettings, StoreCache
from .errors import (
    CorruptLog,
    CorruptObject,
    ImstoreError,
    InvalidInput,
    KeyDeleted,
    KeyNotFound,
    NoStore,
    ObjectNotFound,
    PreconditionFailed,
    Unavailable,
    VersionNotFound,
    from_os_error,
)
from .fsio import crash_point, fsync_dir, fsync_fd, write_all
from .hashing import OBJECT_ID_LEN, blake3, checksum16, validate_prefix
from .index import Index, version_row
from .log import GENESIS, MAX_FRAME, Frame, Log, Record, batch_payload, encode_record
from .objects import CHUNK_SIZE, ObjectReader, ObjectStore
from .packs import PackSet, PackWriter, RepackResult
from .validate import format_time, parse_version, validate_key, validate_meta

if TYPE_CHECKING:
    from .groupcommit import PendingPut

__all__ = ["Store", "Version", "PutResult", "VerifyReport", "BatchItem", "BatchResult", "FORMAT"]

FORMAT = 1
CONFIG_NAME = "config"
_PUT_OPTIONS = frozenset({"content_type", "meta", "message", "if_version", "if_absent", "max_size"})  # put_stream's keywords
INDEX_NAME = "index.sqlite"


_VERSION_FIELDS = ("key", "version", "seq", "op", "hash", "size", "time_ns", "content_type", "message", "meta", "stale")


class Version:
    """One version of a key, as the index knows it. Immutable.

    A plain class with __slots__, not a frozen dataclass: it is defined on every
    start of the CLI, where the dataclass cost ~2 ms (bench/bench_startup.py).
    """

    __slots__ = _VERSION_FIELDS
    key: str
    version: int
    seq: int
    op: str
    hash: str | None
    size: int
    time_ns: int
    content_type: str | None
    message: str | None
    meta: dict
    # True when this came from the cache while the log could not be read: a newer
    # version may exist (the server sends `X-Imstore-Stale: 1` for it). Not part of equality.
    stale: bool

    def __init__(self, key: str, version: int, seq: int, op: str, hash: str | None, size: int, time_ns: int,  # noqa: A002
                 content_type: str | None = None, message: str | None = None, meta: dict | None = None, stale: bool = False):
        setter = object.__setattr__
        for name, value in zip(
            _VERSION_FIELDS,
            (key, version, seq, op, hash, size, time_ns, content_type, message, {} if meta is None else meta, stale),
            strict=True,
        ):
            setter(self, name, value)

    def __setattr__(self, name: str, value) -> None:
        raise AttributeError(f"a Version cannot be changed (tried to set {name})")

    def _compared(self) -> tuple:
        return (self.key, self.version, self.seq, self.op, self.hash, self.size, self.time_ns, self.content_type, self.message,
                self.meta)  # fmt: skip

    def __eq__(self, other) -> bool:
        return self._compared() == other._compared() if isinstance(other, Version) else NotImplemented

    def __hash__(self) -> int:
        return hash(self._compared()[:9])

    def __repr__(self) -> str:
        return "Version(" + ", ".join(f"{name}={getattr(self, name)!r}" for name in _VERSION_FIELDS) + ")"

    def __reduce__(self):
        # copy and pickle: through __init__ (the default restores the slots with setattr, which is refused)
        return Version, (*self._compared(), self.stale)

    def as_stale(self) -> Version:
        """The same version, marked as possibly stale."""
        return Version(*self._compared(), stale=True)

    @property
    def deleted(self) -> bool:
        return self.op == "delete"

    @property
    def time(self) -> str:
        return format_time(self.time_ns)

    @classmethod
    def from_row(cls, row: tuple) -> Version:
        key, version, seq, op, object_hash, size, time_ns, content_type, message, meta = row
        return cls(key, version, seq, op, object_hash, size, time_ns, content_type, message, _unpack_meta(meta))

    @classmethod
    def from_record(cls, record: Record) -> Version:
        return cls(
            record.key,
            record.version,
            record.seq,
            record.op,
            record.hash,
            record.size,
            record.time_ns,
            record.content_type,
            record.message,
            dict(record.meta),
        )

    def to_row(self) -> tuple:
        """The index row of this version (the inverse of from_row), as the cache keeps it."""
        return version_row(self)


class PutResult(NamedTuple):
    version: Version
    unchanged: bool


class BatchItem(NamedTuple):
    """One key's new content in an import batch; its object is already stored (or in the batch's pack)."""

    key: str
    hash: str
    size: int
    content_type: str | None = None
    meta: dict = {}  # never mutated
    message: str | None = None


class BatchResult(NamedTuple):
    """What one committed batch did: the versions it added and how many items were unchanged."""

    records: tuple[Record, ...]
    unchanged: int
    unchanged_bytes: int = 0
    position: tuple[int, str] | None = None  # the log position at which every item was its key's latest

    @property
    def added(self) -> tuple[Version, ...]:
        """The versions the batch added (built on demand: a batch may hold many thousands)."""
        return tuple(Version.from_record(record) for record in self.records)


class VerifyReport:
    """What verify found. problems make it fail; warnings and notes do not. (A plain class: see Version.)"""

    def __init__(self, problems: list[str] | None = None, warnings: list[str] | None = None, notes: list[str] | None = None,
                 records: int = 0, keys: int = 0, objects: int = 0, bytes: int = 0):  # noqa: A002
        self.problems: list[str] = problems if problems is not None else []
        self.warnings: list[str] = warnings if warnings is not None else []
        self.notes: list[str] = notes if notes is not None else []
        self.records = records
        self.keys = keys
        self.objects = objects
        self.bytes = bytes

    def __repr__(self) -> str:
        return f"VerifyReport(ok={self.ok}, problems={self.problems!r}, records={self.records}, objects={self.objects})"

    @property
    def ok(self) -> bool:
        return not self.problems


def _unpack_meta(blob: bytes | None) -> dict:
    return msgpack.unpackb(blob, raw=False) if blob else {}


class Store:
    """An imstore directory. Open with Store.open(path) or create with Store.init(path)."""

    def __init__(self, root: Path, config: dict, cache: StoreCache | None = None, offline_reason: str | None = None):
        self.root = root
        self.config = config
        self.store_id: str = config["store_id"]
        self.packs = PackSet(root / "objects" / "pack")
        self.objects = ObjectStore(root / "objects", packs=self.packs)
        self.log = Log(root / "log")
        self.index_path = root / INDEX_NAME
        self.warnings: list[str] = []
        self.cache = cache
        # Set when the store itself could not be opened and only its cache answers (reads only).
        self.offline_reason = offline_reason
        self._index: Index | None = None
        self._temps_checked = False
        self._seen_log_size = -1  # log size at the last catch-up: a change means another writer appended

    # ================================================================ lifecycle
    @classmethod
    def init(cls, path: str | os.PathLike) -> tuple[Store, bool]:
        """Create a store at path (or open the one there); returns (store, created).

        The layout is made durable first and `config` is linked into place last,
        so a directory with a config is always a complete store. Two processes
        creating the same store at once end up sharing one config.
        """
        root = Path(path).expanduser().absolute()
        if (root / CONFIG_NAME).exists():
            return cls.open(root), False
        try:
            if root.exists():
                if not root.is_dir():
                    raise InvalidInput(f"{root} exists and is not a directory")
                if any(not _is_store_entry(name) for name in os.listdir(root)):
                    raise InvalidInput(f"{root} is a non-empty directory that is not a store; refusing to init there")
            root.mkdir(parents=True, exist_ok=True)
            for directory in (root / "objects", root / "objects" / "pack", root / "log"):
                directory.mkdir(exist_ok=True)
            Log(root / "log").path.touch()
            (root / "log" / "LOCK").touch()
            for directory in (root / "objects" / "pack", root / "objects", root / "log"):
                fsync_dir(directory)
            import uuid  # only here: it costs start-up time on every command

            config = {"format": FORMAT, "store_id": str(uuid.uuid4()), "hash": "blake3", "created": time.time_ns()}
            created = _create_file_durably(root / CONFIG_NAME, msgpack.packb(config, use_bin_type=True))
            fsync_dir(root)
            fsync_dir(root.parent)
        except OSError as exc:
            raise from_os_error(exc, f"creating a store at {root}") from None
        return cls.open(root), created

    @classmethod
    def open(cls, path: str | os.PathLike, *, create: bool = False, cache: CacheSettings | None = None) -> Store:
        """Open the store at path; with create, make one there if there is none.

        With cache settings (enabled), reads go through the store's read cache,
        and a store that cannot be opened but has a cache opens read-only on it.
        """
        root = Path(path).expanduser().absolute()
        config_path = root / CONFIG_NAME
        cache = cache if cache is not None and cache.enabled else None
        try:
            raw = config_path.read_bytes()
        except (FileNotFoundError, NotADirectoryError) as exc:
            offline = cls._open_offline(root, cache, f"no store at {root} (no config file)")
            if offline is not None:
                return offline
            if isinstance(exc, NotADirectoryError):
                raise NoStore(f"no store at {root}: it is not a directory") from None
            if create and (not root.exists() or (root.is_dir() and all(_is_store_entry(name) for name in os.listdir(root)))):
                return cls.init(root)[0]._with_cache(cache)
            raise NoStore(f"no store at {root} (create one with: imstore init {root})") from None
        except OSError as exc:
            error = from_os_error(exc, f"opening the store at {root}")
            offline = cls._open_offline(root, cache, str(error)) if isinstance(error, Unavailable) else None
            if offline is not None:
                return offline
            raise error from None
        try:
            config = msgpack.unpackb(raw, raw=False)
            if not isinstance(config, dict) or not isinstance(config.get("store_id"), str):
                raise ValueError
        except Exception:
            raise CorruptLog(f"the store's config file is damaged: {config_path}") from None
        if config.get("format") != FORMAT:
            raise ImstoreError(f"store format {config.get('format')!r} is not supported (this imstore reads {FORMAT})")
        return cls(root, config)._with_cache(cache)

    def _with_cache(self, settings: CacheSettings | None) -> Store:
        if settings is not None:
            self.cache = StoreCache(settings, self.root, self.store_id)
        return self

    @classmethod
    def _open_offline(cls, root: Path, settings: CacheSettings | None, reason: str) -> Store | None:
        """A read-only Store answered by the cache of root, if there is one (DESIGN: exit 10 unless cached)."""
        store_id = StoreCache.existing_store_id(settings, root) if settings is not None else None
        if store_id is None:
            return None
        return cls(root, {"format": FORMAT, "store_id": store_id}, StoreCache(settings, root, store_id), offline_reason=reason)

    def _check_writable(self) -> None:
        """Fail fast, before anything is written, when the store cannot take a write."""
        if self.offline_reason is not None:
            raise Unavailable(f"cannot write: the store is unavailable: {self.offline_reason}")
        for directory in (self.objects.root, self.log.directory):
            try:
                is_directory = stat.S_ISDIR(os.stat(directory).st_mode)
            except FileNotFoundError:
                raise Unavailable(f"cannot write: the store is unavailable: {directory} is missing") from None
            except OSError as exc:
                raise Unavailable(f"cannot write: the store is unavailable: {exc.strerror or exc} ({directory})") from None
            if not is_directory:
                raise Unavailable(f"cannot write: the store is unavailable: {directory} is not a directory")

    def close(self) -> None:
        self.packs.close()
        if self._index is not None:
            self._index.close()
            self._index = None
        if self.cache is not None:
            self.cache.close()

    def notes(self) -> list[str]:
        """What went wrong with the read cache (never fatal; --debug shows it)."""
        return list(self.cache.notes) if self.cache is not None else []

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # ================================================================ index upkeep
    @property
    def index(self) -> Index:
        """The index, caught up with the log (opened, repaired or rebuilt as needed)."""
        if self._index is None:
            if self.offline_reason is not None:
                raise Unavailable(f"the store is unavailable: {self.offline_reason}")
            self._index = self._open_index()
            try:
                self._catch_up()
            except BaseException:
                self._index.close()  # open it again (and catch up) on the next use
                self._index = None
                raise
        return self._index

    def _current_index(self) -> Index:
        """The index for a read: caught up again if the log changed since we last looked.

        A long-lived Store (a server worker) must see records appended by other
        processes, including one that died between its log fsync and its index update.
        """
        index = self.index
        if self.log.size() != self._seen_log_size:
            self._catch_up()
        return index

    def _open_index(self) -> Index:
        try:
            return Index(self.index_path)
        except sqlite3.DatabaseError:
            self.warnings.append("the index was unreadable; rebuilding it from the log")
            Index.remove_files(self.index_path)
            try:
                return Index(self.index_path)
            except sqlite3.Error as exc:
                raise Unavailable(f"cannot create the index at {self.index_path}: {exc}") from None
        except sqlite3.Error as exc:
            raise Unavailable(f"cannot open the index at {self.index_path}: {exc}") from None

    def _catch_up(self, *, writer: bool = False) -> None:
        """Apply log frames the index has not seen; rebuild it if it disagrees with the log."""
        index = self._index
        assert index is not None
        try:
            # Fast path, no write transaction: the index already ends where the log ends.
            state = index.state()
            if state.log_end == self.log.size() and self._index_matches_log(state):
                return
            self._seen_log_size = self.log.size()
            state = index.begin()
            try:
                if not self._index_matches_log(state):
                    if state.log_end:
                        self.warnings.append("the index did not match the log; rebuilt it from the log")
                    index.clear()
                    state = index.state()
                prev, seq = state.last_hash, state.seq
                for frame in self.log.scan(state.log_end):
                    prev, seq = _check_chain(frame, prev, seq)
                    index.apply(frame.records, frame.offset, frame.end, frame.checksum)
                index.commit()
            except BaseException:
                index.rollback()
                raise
        except sqlite3.Error as exc:
            raise Unavailable(f"the index cannot be updated: {exc}") from None
        torn_at = self.log.torn_at
        if torn_at is not None and writer:
            cut = self.log.size() - torn_at
            self.log.truncate(torn_at)
            self.warnings.append(f"the log ended in a torn record ({cut} bytes at offset {torn_at}, an interrupted write); cut it off")

    def _index_matches_log(self, state) -> bool:
        if state.frame_offset < 0:
            return state.log_end == 0
        if self.log.size() < state.log_end:
            return False
        header = self.log.frame_header_at(state.frame_offset)
        return header is not None and header[1] == state.frame_checksum and state.frame_offset + 20 + header[0] == state.log_end

    def reindex(self) -> int:
        """Rebuild the index from the log from scratch; returns the record count."""
        self.close()
        with self.log.locked():
            Index.remove_files(self.index_path)
            self._index = self._open_index()
            self._catch_up(writer=True)
            return self._index.count()

    @contextmanager
    def _writing(self) -> Iterator[Index]:
        """Hold the log lock with the index caught up: the tail state is current."""
        index = self.index
        with self.log.locked():
            self._catch_up(writer=True)
            if not self._temps_checked:
                self.objects.remove_stale_temps()
                self._temps_checked = True
            yield index

    def _append(self, payloads: list[bytes], records: tuple[Record, ...] | None = None) -> Frame:
        """Append records (one frame) and apply them to the index. Caller holds the lock.

        The frame is read back and decoded, unless the caller built the records from
        the payloads itself (a large import batch, where decoding would cost a third of the commit).
        """
        index = self.index
        state = index.state()
        payload = payloads[0] if len(payloads) == 1 else batch_payload(payloads)
        offset, end = self.log.append(payload, state.log_end)
        if records is not None:
            frame = Frame(offset, end, checksum16(payload), records)
        else:
            frame = self.log.read_frame_at(offset)
        if frame is None:
            raise CorruptLog(f"the record just appended at offset {offset} cannot be read back")
        try:
            # A reader may have applied this frame already (it is durable and visible).
            if index.begin().log_end == frame.offset:
                index.apply(frame.records, frame.offset, frame.end, frame.checksum)
            index.commit()
            if self._seen_log_size == frame.offset:
                self._seen_log_size = frame.end  # our own record: no catch-up needed on the next read
        except sqlite3.Error:
            # The log is the truth and the record is durable; the index catches up later.
            index.rollback()
        crash_point("index-updated")
        return frame

    # ================================================================ writing
    def put(self, key: str, data: bytes, **options) -> PutResult:
        """Store data as a new version of key (see put_stream for options)."""
        return self.put_stream(key, [data], **options)

    def put_stream(
        self,
        key: str,
        source: BinaryIO | Iterable[bytes],
        *,
        content_type: str | None = None,
        meta: dict | None = None,
        message: str | None = None,
        if_version: int | None = None,
        if_absent: bool = False,
        max_size: int | None = None,
    ) -> PutResult:
        """Stream source (a binary file or an iterable of bytes) into a new version of key.

        The object is durable before the log record is written, and the record
        is fsynced before this returns. A put whose bytes, content type and
        metadata equal the latest version's adds nothing (`unchanged`).
        """
        meta, if_version = self._check_put(key, content_type, meta, if_version, if_absent)
        chunks = _read_chunks(source) if hasattr(source, "read") else source
        kept = _SmallObjectKeeper(self.cache.max_object_size if self.cache else -1)
        object_id, size = self.objects.write_stream(kept.watch(chunks), max_size=max_size)
        pending = _pending_put(key, object_id, size, content_type, meta, message, if_version, if_absent)
        self._group_commit([pending])
        result = pending.outcome()
        self._fill_after_puts([(result, kept.data)])
        return result

    def put_many(self, puts: Iterable[tuple[str, bytes, dict]]) -> list[PutResult | Exception]:
        """Several independent puts of in-memory content, committed together.

        puts: (key, data, options), options as put_stream's keywords. Every object
        is made durable first (sharing the fsync waits, see ObjectStore.write_many),
        then all the records go into one log frame with one fsync (the same key
        twice: successive versions, in order). Each put stands alone: its refused
        precondition or bad input is its own ImstoreError in the answer, in the
        order given; a failed frame's error (even a bug's) is the answer of its
        puts only. The server writes concurrent small PUTs this way: one thread
        writing a batch costs less CPU than a thread per put taking turns on the GIL.
        """
        answers: list = []
        checked: list[tuple[int, bytes, tuple]] = []  # (position, data, the fields of its record but the object's)
        for position, (key, data, options) in enumerate(puts):
            answers.append(None)
            unknown = set(options) - _PUT_OPTIONS
            if unknown:
                raise TypeError(f"put_many: unknown option(s) {sorted(unknown)}")
            content_type, if_absent, max_size = options.get("content_type"), options.get("if_absent", False), options.get("max_size")
            try:
                if max_size is not None and len(data) > max_size:
                    raise InvalidInput(f"content is larger than the limit of {max_size} bytes")
                meta, if_version = self._check_put(key, content_type, options.get("meta"), options.get("if_version"), if_absent)
            except ImstoreError as exc:
                answers[position] = exc
                continue
            checked.append((position, data, (key, content_type, meta, options.get("message"), if_version, if_absent)))
        stored = self.objects.write_many([data for _position, data, _fields in checked])
        pending: dict[int, PendingPut] = {}
        for (position, _data, (key, *fields)), written in zip(checked, stored, strict=True):
            if isinstance(written, ImstoreError):
                answers[position] = written
            else:
                pending[position] = _pending_put(key, *written, *fields)
        self._group_commit(list(pending.values()))
        done = []
        for position, data, _fields in checked:
            if position not in pending:
                continue
            try:
                answers[position] = pending[position].outcome()
            except Exception as exc:  # noqa: BLE001 -- even a bug fails only the puts of its frame: the rest committed
                answers[position] = exc
                continue
            done.append((answers[position], data))
        self._fill_after_puts(done)
        return answers

    def _check_put(self, key: str, content_type: str | None, meta: dict | None, if_version, if_absent: bool):
        """Everything a put can be refused for before its content is read: (meta, if_version), checked."""
        validate_key(key)
        meta = validate_meta(meta)
        if_version = _expected_version(if_version)
        if content_type is not None and (not content_type.strip() or len(content_type) > 255):
            raise InvalidInput("a content type is 1 to 255 characters")
        self._check_writable()
        if if_version is not None or if_absent:
            # Fail fast, before storing the content: a refused put then writes no object at all.
            # The check under the lock (decide, in _pending_put) is the one that counts.
            index = self.index
            self._catch_up()
            _check_preconditions(key, index.latest_version(key), if_version, if_absent)
        return meta, if_version

    def _group_commit(self, pending: list[PendingPut]) -> None:
        """Concurrent puts in this process share one append and one fsync (see groupcommit.py)."""
        if pending:
            from .groupcommit import GroupCommit  # here: readers never pay for threading

            GroupCommit.for_log(str(self.log.path)).submit(pending, self._commit_puts)

    def _fill_after_puts(self, done: list[tuple[PutResult, bytes | None]]) -> None:
        """Keep new small objects and their versions in the read cache: one cache transaction for all."""
        if self.cache is None:
            return
        fresh = [(result, data) for result, data in done if not result.unchanged and data is not None]
        if not fresh:
            return
        with self.cache.batched():
            for result, data in fresh:
                self.cache.put_object(result.version.hash, data)
                self._fill_version(result.version, latest=True)

    def _commit_puts(self, batch: list[PendingPut]) -> None:
        """Decide each queued put in order and append the new records as one frame (the caller leads)."""
        with self._writing() as index:
            state = index.state()
            seq, prev = state.seq, state.last_hash
            payloads, owners = [], []
            for pending in batch:
                try:
                    decision = pending.decide(index)
                except ImstoreError as exc:
                    pending.error = exc
                    continue
                if isinstance(decision, PutResult):
                    pending.result = decision
                    continue
                op, key, latest, object_id, size, content_type, meta, message = decision
                payload = encode_record(
                    seq=seq + 1, time_ns=time.time_ns(), op=op, key=key, version=(latest[0] if latest else 0) + 1,
                    hash=object_id, size=size, content_type=content_type, meta=meta, message=message, prev=prev,
                )  # fmt: skip
                seq, prev = seq + 1, blake3(payload).digest()
                payloads.append(payload)
                owners.append(pending)
            if payloads:
                frame = self._append(payloads)
                for pending, record in zip(owners, frame.records, strict=True):
                    pending.result = PutResult(Version.from_record(record), unchanged=False)

    def delete(self, key: str, *, message: str | None = None, if_version: int | None = None) -> Version:
        """Append a tombstone version for key. Deleting a missing or deleted key is NotFound."""
        validate_key(key)
        if_version = _expected_version(if_version)
        self._check_writable()
        with self._writing() as index:
            latest = index.latest_version(key)
            if latest is None:
                raise KeyNotFound(f"no key {key!r}")
            if latest[1] == "delete":
                raise KeyDeleted(f"key {key!r} is already deleted (version {latest[0]})")
            _check_preconditions(key, latest, if_version, False)
            frame = self._append([self._payload("delete", key, latest, None, 0, None, {}, message)])
        tombstone = Version.from_record(frame.records[0])
        self._fill_version(tombstone, latest=True)
        return tombstone

    def import_batch(self, items: list[BatchItem], *, pack: PackWriter | None = None, message: str | None = None) -> BatchResult:
        """Commit items as one atomic batch: one log frame, all of it or none of it.

        The pack (holding the batch's new objects) is made durable and visible
        first; then, under the lock, every item whose content, type and metadata
        equal its key's latest version is dropped as unchanged and the rest are
        appended as one frame. Keys may repeat: each occurrence is a version.
        """
        for item in items:
            validate_key(item.key)
            validate_meta(item.meta)
        if pack is not None:
            pack.finish()
        with self._writing() as index:
            # key -> (version, op, hash, content_type, meta), from the index and then from this batch
            current = {key: (row[1], row[3], row[4], row[7], row[9]) for key, row in index.latest_rows(item.key for item in items).items()}
            state = index.state()
            seq, prev = state.seq, state.last_hash
            payloads: list[bytes] = []
            records: list[Record] = []
            unchanged = unchanged_bytes = 0
            for item in items:
                latest = current.get(item.key)
                if latest is not None and latest[1] == "put" and latest[2:4] == (item.hash, item.content_type):
                    if (_unpack_meta(latest[4]) if isinstance(latest[4], bytes) else latest[4] or {}) == item.meta:
                        unchanged += 1
                        unchanged_bytes += item.size
                        continue
                if (pack is None or item.hash not in pack) and not self.objects.exists(item.hash):
                    raise InvalidInput(f"cannot import {item.key!r}: its object {item.hash} is not in the store")
                seq += 1
                version = (latest[0] if latest else 0) + 1
                now, text = time.time_ns(), item.message or message
                payload = encode_record(
                    seq=seq, time_ns=now, op="put", key=item.key, version=version, hash=item.hash, size=item.size,
                    content_type=item.content_type, meta=item.meta, message=text, prev=prev,
                )  # fmt: skip
                payloads.append(payload)
                record_hash = blake3(payload).digest()
                records.append(Record(seq, now, "put", item.key, version, item.hash, item.size, item.content_type, item.meta, text,
                                      prev, record_hash))  # fmt: skip
                prev = record_hash
                current[item.key] = (version, "put", item.hash, item.content_type, item.meta)
            if not payloads:
                return BatchResult((), unchanged, unchanged_bytes, (state.seq, state.last_hash.hex()))
            if sum(len(payload) + 8 for payload in payloads) > MAX_FRAME - 64:
                raise InvalidInput(f"a batch of {len(payloads)} records is too large for one log frame; import it in parts")
            frame = self._append(payloads, tuple(records))
        return BatchResult(frame.records, unchanged, unchanged_bytes, (seq, prev.hex()))

    def log_position(self) -> tuple[int, str]:
        """(seq, chain hash) of the last record. The chain covers every record, so an equal
        position later means the history has not changed in between."""
        state = self._current_index().state()
        return state.seq, state.last_hash.hex()

    def latest_contents(self, keys: Iterable[str]) -> dict[str, tuple[str, str | None, dict]]:
        """(hash, content_type, meta) of the latest version of each of keys that is live."""
        rows = self.index.latest_rows(keys, "op, hash, content_type, meta")
        return {key: (row[2], row[3], _unpack_meta(row[4]) if row[4] else {}) for key, row in rows.items() if row[1] == "put"}

    def live_versions(self, prefix: str = "", at: int | None = None) -> Iterator[Version]:
        """Each live key starting with prefix, in key order: its latest version, or the one current at `at` (ns)."""
        if at is None:
            yield from self.ls(prefix)
            return
        index = self.index
        for latest in self.ls(prefix, include_deleted=True):
            row = index.version_at(latest.key, at)
            if row is not None and row[3] == "put":
                yield Version.from_row(row)

    def repack(self) -> RepackResult:
        """Merge small packs into one, under the writers' lock (see packs.repack)."""
        from .packs import repack

        with self.log.locked():
            return repack(self.packs)

    def _payload(self, op, key, latest, object_id, size, content_type, meta, message) -> bytes:
        state = self.index.state()
        return encode_record(
            seq=state.seq + 1,
            time_ns=time.time_ns(),
            op=op,
            key=key,
            version=(latest[0] if latest else 0) + 1,
            hash=object_id,
            size=size,
            content_type=content_type,
            meta=meta,
            message=message,
            prev=state.last_hash,
        )

    # ================================================================ reading
    def resolve(self, key: str, version: int | str | None = None, at: int | None = None) -> Version:
        """The version of key asked for: latest, number `version`, or current at `at` (ns).

        A numbered version comes from the cache when it holds it (it never
        changes). The latest comes from the index; only when the log cannot be
        read is it taken from the cache, marked `stale` with a warning.
        """
        validate_key(key)
        if version is not None:
            number = parse_version(version)
            found = self._cached_version(key, number)
            if found is None:
                found = self._version_from_index(key, number)
                self._fill_version(found)
            if found.deleted:
                raise KeyDeleted(f"version {number} of {key!r} is a deletion")
            return found
        if at is not None:
            return self._version_at(key, at)
        try:
            found = self._latest_from_index(key)
        except Unavailable as exc:
            found = self._stale_latest(key, exc)
        if found.deleted:
            stale = " (from the cache while the store is unavailable: may be stale)" if found.stale else ""
            raise KeyDeleted(f"key {key!r} is deleted (version {found.version}){stale}; older versions stay readable with --version")
        return found

    def _version_from_index(self, key: str, number: int) -> Version:
        index = self._current_index()
        row = _index_query(lambda: index.version(key, number))
        if row is None:
            latest = _index_query(lambda: index.latest_version(key))
            if latest is None:
                raise KeyNotFound(f"no key {key!r}")
            raise VersionNotFound(f"key {key!r} has no version {number} (latest is {latest[0]})")
        return Version.from_row(row)

    def _version_at(self, key: str, at: int) -> Version:
        index = self._current_index()
        row = _index_query(lambda: index.version_at(key, at))
        if row is None:
            if _index_query(lambda: index.latest_version(key)) is None:
                raise KeyNotFound(f"no key {key!r}")
            raise VersionNotFound(f"key {key!r} had no version at {format_time(at)}")
        found = Version.from_row(row)
        if found.deleted:
            raise KeyDeleted(f"key {key!r} was deleted at {format_time(at)} (version {found.version})")
        return found

    def _latest_from_index(self, key: str) -> Version:
        index = self._current_index()
        latest = _index_query(lambda: index.latest_version(key))
        if latest is None:
            raise KeyNotFound(f"no key {key!r}")
        found = Version.from_row(_index_query(lambda: index.version(key, latest[0])))
        if self.cache is not None:
            self.cache.note_latest(found.to_row(), _index_query(lambda: index.state().seq))
        return found

    def _stale_latest(self, key: str, unavailable: Unavailable) -> Version:
        """The cache's last-seen latest version of key, while the log cannot be read."""
        cached = self.cache.latest(key) if self.cache is not None else None
        if cached is None:
            raise unavailable
        row, seq = cached
        found = Version.from_row(row).as_stale()
        self.warnings.append(
            f"{unavailable}; version {found.version} of {key!r} comes from the cache (as of log seq {seq}) and may be stale"
        )
        return found

    def _cached_version(self, key: str, number: int) -> Version | None:
        if self.cache is None:
            return None
        row = self.cache.version_row(key, number)
        return Version.from_row(row) if row is not None else None

    def _fill_version(self, found: Version, *, latest: bool = False) -> None:
        if self.cache is not None:
            self.cache.put_version_row(found.to_row())
            if latest:
                self.cache.note_latest(found.to_row(), found.seq)

    def open_version(self, key: str, version: int | str | None = None, at: int | None = None) -> tuple[Version, ObjectReader]:
        """(version, verified reader of its bytes). version.stale says it may not be the newest."""
        found = self.resolve(key, version, at)
        try:
            return found, self._open_object_id(found.hash, found.size)
        except ObjectNotFound:
            # The log says these bytes were stored: their absence is damage, not "not found".
            raise CorruptObject(f"object {found.hash} of {key!r} version {found.version} is missing from the store") from None

    def get(self, key: str, version: int | str | None = None, at: int | None = None) -> bytes:
        """The bytes of a version, checked against their hash."""
        return self.open_version(key, version, at)[1].read()

    def open_object(self, hash_or_prefix: str) -> ObjectReader:
        """A verified reader of an object by full hash or unique prefix (the cache answers when it can)."""
        prefix = validate_prefix(hash_or_prefix)
        if len(prefix) < OBJECT_ID_LEN:
            try:
                prefix = self.objects.resolve_prefix(prefix)
            except Unavailable:
                matches = self.cache.ids_with_prefix(prefix) if self.cache is not None else []
                if len(matches) != 1:
                    raise
                prefix = matches[0]
        return self._open_object_id(prefix)

    def _open_object_id(self, object_id: str, size: int | None = None) -> ObjectReader:
        """Cache first (hash-checked), then the store; small objects read from the store fill the cache."""
        if self.cache is None or (size is not None and size > self.cache.max_object_size):
            return self.objects.open(object_id)
        data = self.cache.object_bytes(object_id)
        if data is not None:
            return CachedObjectReader(object_id, data)  # type: ignore[return-value]
        reader = self.objects.open(object_id)
        if reader.size > self.cache.max_object_size:
            return reader
        data = reader.read()
        self.cache.put_object(object_id, data)
        return CachedObjectReader(object_id, data)  # type: ignore[return-value]

    def cat(self, hash_or_prefix: str) -> bytes:
        return self.open_object(hash_or_prefix).read()

    def history(self, key: str, limit: int | None = None) -> list[Version]:
        """Every version of key, oldest first (with limit: the newest `limit`)."""
        validate_key(key)
        rows = self._current_index().history(key, limit)
        if not rows:
            raise KeyNotFound(f"no key {key!r}")
        return [Version.from_row(row) for row in reversed(rows)]

    def ls(self, prefix: str = "", *, include_deleted: bool = False, limit: int | None = None) -> list[Version]:
        """The latest version of each key that starts with prefix, in key order."""
        return [Version.from_row(row) for row in self._current_index().ls(prefix, include_deleted, limit)]

    def log_records(self, after: int = 0, limit: int | None = None) -> list[Version]:
        """The global log: every version of every key in commit order."""
        return [Version.from_row(row) for row in self._current_index().log(after, limit)]

    # ================================================================ checking
    def verify(self, progress: Callable[[int, int], None] | None = None) -> VerifyReport:
        """Check the chain, every record, every object's hash and the index against the log."""
        report = VerifyReport()
        referenced: dict[str, str] = {}
        latest_version: dict[str, int] = {}
        log_versions: list[Version] = []
        try:
            prev, seq = GENESIS, 0
            for frame in self.log.scan(0):
                prev, seq = _check_chain(frame, prev, seq)
                for record in frame.records:
                    expected = latest_version.get(record.key, 0) + 1
                    if record.version != expected:
                        report.problems.append(
                            f"record seq {record.seq}: key {record.key!r} has version {record.version}, expected {expected}"
                        )
                    latest_version[record.key] = record.version
                    if record.hash:
                        referenced.setdefault(record.hash, f"{record.key!r} version {record.version}")
                    log_versions.append(Version.from_record(record))
            if self.log.torn_at is not None:
                report.warnings.append(f"the log ends in a torn record at offset {self.log.torn_at}; the next write cuts it off")
        except CorruptLog as exc:
            report.problems.append(str(exc))
        report.records = len(log_versions)
        report.keys = len(latest_version)
        self._verify_index(report, log_versions)
        self._verify_objects(report, referenced, progress)
        return report

    def _verify_index(self, report: VerifyReport, log_versions: list[Version]) -> None:
        try:
            index = self.index
            indexed = [Version.from_row(row) for row in index.all_rows()]
        except ImstoreError as exc:
            report.problems.append(f"index: {exc}")
            return
        if indexed != log_versions:
            pairs = zip(indexed, log_versions, strict=False)
            differing = next((a.seq for a, b in pairs if a != b), min(len(indexed), len(log_versions)) + 1)
            report.problems.append(
                f"the index disagrees with the log (from seq {differing}; {len(indexed)} vs {len(log_versions)} records):"
                " run imstore reindex"
            )

    def _verify_objects(self, report: VerifyReport, referenced: dict[str, str], progress) -> None:
        try:
            present = set(self.objects.iter_ids())
        except (ImstoreError, OSError) as exc:
            report.problems.append(f"objects: {exc}")
            return
        total = len(present | set(referenced))
        for number, object_id in enumerate(sorted(present | set(referenced)), 1):
            if progress:
                progress(number, total)
            where = referenced.get(object_id)
            if object_id not in present:
                report.problems.append(f"object {object_id} is missing (needed by {where})")
                continue
            try:
                reader = self.objects.open(object_id)
                reader.verify()
                report.objects += 1
                report.bytes += reader.size
            except ImstoreError as exc:
                report.problems.append(f"object {object_id} is damaged{f' (needed by {where})' if where else ''}: {exc}")
                continue
            if where is None:
                report.notes.append(f"object {object_id} is not referenced by any record")
        report.problems.extend(self.packs.problems())
        for orphan in self.packs.orphans():
            report.notes.append(f"pack {orphan.name} has no index (an interrupted import); it is never read")
        for temp in self.objects.temp_files():
            report.notes.append(f"temp file {temp} (left by an interrupted write; removed by a later writer)")


def _check_chain(frame: Frame, prev: bytes, seq: int) -> tuple[bytes, int]:
    """Each record must follow the one before: seq + 1 and prev = its hash."""
    for record in frame.records:
        if record.seq != seq + 1 or record.prev != prev:
            raise CorruptLog(
                f"the log's hash chain is broken at offset {frame.offset} (record seq {record.seq}, expected {seq + 1}):"
                " history was altered or the middle of the log is corrupt"
            )
        prev, seq = record.record_hash, record.seq
    return prev, seq


def _expected_version(value: int | str | None) -> int | None:
    """An --if-version value: a version number, or 0 for "the key has no versions"."""
    if value is None:
        return None
    if value == 0 or (isinstance(value, str) and value.strip() == "0"):
        return 0
    return parse_version(value)


def _check_preconditions(key: str, latest: tuple[int, str] | None, if_version: int | None, if_absent: bool) -> None:
    if if_absent and latest is not None and latest[1] != "delete":
        raise PreconditionFailed(f"key {key!r} exists (version {latest[0]}) and --if-absent was given")
    if if_version is not None:
        current = latest[0] if latest else 0
        if current != if_version:
            raise PreconditionFailed(f"key {key!r} is at version {current}, not {if_version}")


def _index_query(query: Callable[[], object]):
    """Run an index query; a failing database (EIO, vanished file) means the store is unavailable."""
    try:
        return query()
    except sqlite3.Error as exc:
        raise Unavailable(f"the index cannot be read: {exc}") from None


def _pending_put(key: str, object_id: str, size: int, content_type, meta: dict, message, if_version, if_absent: bool) -> PendingPut:
    """A put whose object is durable, waiting for its frame: decide() runs under the log lock."""
    from .groupcommit import PendingPut  # here: readers never pay for threading

    def decide(index: Index):
        """The unchanged result, or the fields of the new record."""
        latest = index.latest_version(key)
        _check_preconditions(key, latest, if_version, if_absent)
        if latest is not None and latest[1] == "put":
            current = Version.from_row(index.version(key, latest[0]))
            if current.hash == object_id and current.content_type == content_type and current.meta == meta:
                return PutResult(current, unchanged=True)
        return ("put", key, latest, object_id, size, content_type, meta, message)

    return PendingPut(key, decide)


class _SmallObjectKeeper:
    """Keeps the bytes of an object being written while it stays within limit (to fill the cache)."""

    def __init__(self, limit: int):
        self.limit = limit
        self.data: bytes | None = b"" if limit >= 0 else None
        self._parts: list[bytes] = []
        self._size = 0

    def watch(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        for chunk in chunks:
            if self.data is not None:
                self._size += len(chunk)
                if self._size > self.limit:
                    self.data, self._parts = None, []
                else:
                    self._parts.append(bytes(chunk))
            yield chunk
        if self.data is not None:
            self.data = b"".join(self._parts)
            self._parts = []


def _read_chunks(source: BinaryIO) -> Iterator[bytes]:
    read = getattr(source, "read1", None) or source.read
    while True:
        try:
            chunk = read(CHUNK_SIZE)
        except OSError as exc:
            raise InvalidInput(f"cannot read the input: {exc.strerror or exc}") from None
        if not chunk:
            return
        yield chunk


_STORE_ENTRIES = {"objects", "log", CONFIG_NAME}


def _is_store_entry(name: str) -> bool:
    """Names a half-made store may hold (another process is creating it right now)."""
    return name in _STORE_ENTRIES or name.startswith(".tmp-" + CONFIG_NAME)


def _create_file_durably(path: Path, data: bytes) -> bool:
    """Write path atomically unless it exists; True if this call created it."""
    temp = path.with_name(f".tmp-{path.name}-{os.getpid()}-{os.urandom(4).hex()}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444)
    try:
        try:
            write_all(fd, data)
            fsync_fd(fd)
        finally:
            os.close(fd)
        os.link(temp, path)
        return True
    except FileExistsError:
        return False
    finally:
        os.unlink(temp)
