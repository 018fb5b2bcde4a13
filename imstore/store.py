"""Store: the library API, a facade over the parts of one store directory.

A Store composes the object backend (loose objects and packs), the log, the
indexer that keeps the SQLite index up with the log, the committer (the one
write path) and an optional read cache. It owns the read path (cache first,
then the index and the objects, with a stale fallback while the store is
unavailable); everything else it hands to its parts.

Nothing here prints: what the user should hear about (a repaired torn tail, a
rebuilt index) is collected in `Store.warnings` for the CLI or server to show.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from . import layout
from .errors import (
    CorruptIndex,
    CorruptLog,
    CorruptObject,
    KeyDeleted,
    KeyNotFound,
    NoStore,
    ObjectNotFound,
    Unavailable,
    VersionNotFound,
    from_os_error,
)
from .hashing import OBJECT_ID_LEN, validate_prefix
from .index import Index
from .indexer import Indexer, index_query
from .log import Log
from .model import BatchItem, BatchResult, PutResult, VerifyReport, Version, unpack_meta
from .validate import format_time, parse_version, validate_key

if TYPE_CHECKING:
    from .cache import CacheSettings, StoreCache  # loaded when a cache is opened: commands that read no object skip it
    from .commit import Committer
    from .objects import ObjectReader, ObjectStore
    from .packs import PackSet, PackWriter, RepackResult

__all__ = ["Store", "Version", "PutResult", "VerifyReport", "BatchItem", "BatchResult", "FORMAT"]

FORMAT = layout.FORMAT
# repack clears what interrupted writes left at once, except a temp file touched in the last minute:
# objects are written before the writers' lock is taken, so that one may be a put under way.
REPACK_TEMP_AGE = 60


class Store:
    """An imstore directory. Open with Store.open(path) or create with Store.init(path)."""

    def __init__(self, root: Path, config: dict, cache: StoreCache | None = None, offline_reason: str | None = None):
        self.root = root
        self.config = config
        self.store_id: str = config["store_id"]
        self.log = Log(root / layout.LOG)
        self.index_path = root / layout.INDEX
        self.warnings: list[str] = []
        # Why the last resolve's answer may not be the newest (H2): damage in the log after it, else None.
        self.read_caveat: str | None = None
        self.cache = cache
        # Set when the store itself could not be opened and only its cache answers (reads only).
        self.offline_reason = offline_reason
        self.indexer = Indexer(self.log, self.index_path, self.warnings)
        self._making = threading.RLock()  # see _part

    # Made on first use, so that prove, checkpoint or history never load objects, packs or commit;
    # under a lock, as server threads share one Store and two committers would be two writers.
    def _part(self, name: str, make: Callable[[], object]):
        part = self.__dict__.get(name)
        if part is None:
            with self._making:
                part = self.__dict__.get(name)
                if part is None:
                    part = self.__dict__[name] = make()
        return part

    @property
    def packs(self) -> PackSet:
        from .packs import PackSet

        return self._part("_packs", lambda: PackSet(self.root / layout.PACKS))

    @property
    def objects(self) -> ObjectStore:
        from .objects import ObjectStore

        return self._part("_objects", lambda: ObjectStore(self.root / layout.OBJECTS, packs=self.packs))

    @property
    def committer(self) -> Committer:
        from .commit import Committer

        return self._part("_committer", lambda: Committer(self.log, self.objects, self.indexer, self._check_writable))

    # ================================================================ lifecycle
    @classmethod
    def init(cls, path: str | os.PathLike) -> tuple[Store, bool]:
        """Create a store at path (or open the one there); returns (store, created).

        Two processes creating the same store at once end up sharing one config.
        """
        root = Path(path).expanduser().absolute()
        if (root / layout.CONFIG).exists():
            return cls.open(root), False
        created = layout.create_store(root)
        return cls.open(root), created

    @classmethod
    def open(cls, path: str | os.PathLike, *, create: bool = False, cache: CacheSettings | None = None) -> Store:
        """Open the store at path; with create, make one there if there is none.

        With cache settings (enabled), reads go through the store's read cache,
        and a store that cannot be opened but has a cache opens read-only on it.
        """
        root = Path(path).expanduser().absolute()
        config_path = root / layout.CONFIG
        cache = cache if cache is not None and cache.enabled else None
        try:
            raw = config_path.read_bytes()
        except (FileNotFoundError, NotADirectoryError) as exc:
            offline = cls._open_offline(root, cache, f"no store at {root} (no config file)")
            if offline is not None:
                return offline
            if isinstance(exc, NotADirectoryError):
                raise NoStore(f"no store at {root}: it is not a directory") from None
            if create and (layout.may_create_at(root) or config_path.exists()):
                # (A racing process may have finished the store, and opened it, since the read above.)
                return cls.init(root)[0]._with_cache(cache)
            raise layout.no_store_error(root) from None
        except OSError as exc:
            error = from_os_error(exc, f"opening the store at {root}")
            offline = cls._open_offline(root, cache, str(error)) if isinstance(error, Unavailable) else None
            if offline is not None:
                return offline
            raise error from None
        return cls(root, layout.parse_config(raw, config_path))._with_cache(cache)

    def _with_cache(self, settings: CacheSettings | None) -> Store:
        if settings is not None:
            from .cache import StoreCache  # here: commands that read no object (prove, history...) never load the cache

            self.cache = StoreCache(settings, self.root, self.store_id)
        return self

    @classmethod
    def _open_offline(cls, root: Path, settings: CacheSettings | None, reason: str) -> Store | None:
        """A read-only Store answered by the cache of root, if there is one (DESIGN: exit 10 unless cached)."""
        from .cache import StoreCache

        store_id = StoreCache.existing_store_id(settings, root) if settings is not None else None
        if store_id is None:
            return None
        return cls(root, {"format": FORMAT, "store_id": store_id}, StoreCache(settings, root, store_id), offline_reason=reason)

    def _check_writable(self) -> None:
        """Fail fast, before anything is written, when the store cannot take a write."""
        if self.offline_reason is not None:
            raise Unavailable(f"cannot write: the store is unavailable: {self.offline_reason}")
        layout.check_writable(self.root)

    def close(self) -> None:
        if "_packs" in self.__dict__:  # made only if used
            self.packs.close()
        self.indexer.close()
        if self.cache is not None:
            self.cache.close()

    def notes(self) -> list[str]:
        """What the user may want to know that is not a warning (the read cache's notes)."""
        return list(self.cache.notes) if self.cache is not None else []

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # ================================================================ the index
    @property
    def index(self) -> Index:
        """The index, caught up with the log (opened, repaired or rebuilt as needed)."""
        if self.offline_reason is not None:
            raise Unavailable(f"the store is unavailable: {self.offline_reason}")
        return self.indexer.index

    @property
    def _index(self) -> Index | None:
        """The index if it is open (None: this Store has not needed it yet)."""
        return self.indexer._index

    def _current_index(self) -> Index:
        if self.offline_reason is not None:
            raise Unavailable(f"the store is unavailable: {self.offline_reason}")
        return self.indexer.current()

    def reindex(self) -> int:
        """Rebuild the index from the log from scratch; returns the record count."""
        self.close()
        with self.log.locked():
            return self.indexer.rebuild()

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
        from .transfer import SmallObjectKeeper, read_chunks

        chunks = read_chunks(source) if hasattr(source, "read") else source
        kept = SmallObjectKeeper(self.cache.max_object_size if self.cache else -1)
        result = self.committer.put_stream(key, kept.watch(chunks), content_type=content_type, meta=meta, message=message,
                                           if_version=if_version, if_absent=if_absent, max_size=max_size)  # fmt: skip
        self._fill_after_puts([(result, kept.data)])
        return result

    def write_object(self, chunks: Iterable[bytes], *, max_size: int | None = None) -> tuple[str, int]:
        """Store bytes as an object (durable on return) without a version: (object_id, size). See put_object."""
        self._check_writable()
        return self.objects.write_stream(chunks, max_size=max_size)

    def write_spans(self, spans: list, *, adopt: bool = False, prefix=None) -> tuple[str, int]:
        """Store spans (path, offset, length) of files, in order, as one object, durable: (object_id, size). With adopt, the one
        span's whole file becomes the object itself (ObjectStore.adopt, prefix its hashed start): it must never change again."""
        self._check_writable()
        return self.objects.adopt(spans[0][0], prefix) if adopt else self.objects.add_spans(spans)

    def put_object(self, key: str, object_id: str, **options) -> PutResult:
        """A new version of key naming an object already stored (write_object); options as put_stream's, but max_size."""
        return self.committer.put_object(key, object_id, **options)

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
        puts = list(puts)
        answers = self.committer.put_many(puts)
        self._fill_after_puts([(answer, data) for answer, (_key, data, _options) in zip(answers, puts, strict=True)
                               if isinstance(answer, PutResult)])  # fmt: skip
        return answers

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

    def delete(self, key: str, *, message: str | None = None, if_version: int | None = None) -> Version:
        """Append a tombstone version for key. Deleting a missing or deleted key is NotFound."""
        tombstone = self.committer.delete(key, message=message, if_version=if_version)
        self._fill_version(tombstone, latest=True)
        return tombstone

    def import_batch(self, items: list[BatchItem], *, pack: PackWriter | None = None, message: str | None = None) -> BatchResult:
        """Commit items as one atomic batch: one log frame, all of it or none of it.

        The pack (holding the batch's new objects) is made durable and visible
        first; then, under the lock, every item whose content, type and metadata
        equal its key's latest version is dropped as unchanged and the rest are
        appended as one frame. Keys may repeat: each occurrence is a version.
        """
        return self.committer.import_batch(items, pack=pack, message=message)

    def log_position(self) -> tuple[int, str]:
        """(seq, chain hash) of the last record. The chain covers every record, so an equal
        position later means the history has not changed in between."""
        state = self._current_index().state()
        return state.seq, state.last_hash.hex()

    def latest_contents(self, keys: Iterable[str]) -> dict[str, tuple[str, str | None, dict]]:
        """(hash, content_type, meta) of the latest version of each of keys that is live."""
        rows = self.index.latest_rows(keys, "op, hash, content_type, meta")
        return {key: (row[2], row[3], unpack_meta(row[4]) if row[4] else {}) for key, row in rows.items() if row[1] == "put"}

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
            removed = self.objects.remove_stale_temps(REPACK_TEMP_AGE)
            if removed:
                self.warnings.append(f"removed {removed} temp file(s) left by interrupted writes")
            return repack(self.packs, superseded=self.objects.good_loose_copy)

    # ================================================================ reading
    def resolve(self, key: str, version: int | str | None = None, at: int | None = None) -> Version:
        """The version of key asked for: latest, number `version`, or current at `at` (ns).

        A numbered version comes from the cache when it holds it (it never
        changes). The latest comes from the index; only when the log cannot be
        read is it taken from the cache, marked `stale` with a warning.
        """
        validate_key(key)
        self.read_caveat = None
        try:
            found = self._resolve(key, version, at)
        except (KeyNotFound, KeyDeleted, VersionNotFound) as exc:
            numbered_deletion = version is not None and isinstance(exc, KeyDeleted)
            caveat = None if numbered_deletion or self.offline_reason else self._newer_may_be_lost(key, None)
            if caveat is None:
                raise
            self.read_caveat = caveat
            raise type(exc)(f"{exc}; {caveat}") from None
        if version is None and not found.stale:  # a latest or --at answer: is anything after it lost?
            self.read_caveat = self._newer_may_be_lost(key, found.version)
            if self.read_caveat is not None:
                self.warnings.append(self.read_caveat)
        return found

    def _newer_may_be_lost(self, key: str, number: int | None) -> str | None:
        """H2: the log's damage after version `number` of key (None: after its latest intact record), described.

        A record lost to damage after a key's newest intact version may have been a newer version of it
        (or its first, for a key with none): such an answer is given, never without saying so."""
        damaged = self.indexer.damaged()  # one query of a table that is empty in a healthy store
        if not damaged:
            return None
        index = self._current_index()
        if number is None:
            latest = index_query(lambda: index.latest_version(key))
            number = latest[0] if latest is not None else None
        if number is not None:
            span = index_query(lambda: index.record_span(key, number))
            damaged = [stretch for stretch in damaged if span is None or stretch[0] > span[0]]
            if not damaged:
                return None
        places = ", ".join(str(offset) for offset, _end, _reason in damaged[:5])
        after = f"after version {number} of {key!r}" if number is not None else f"and holds no version of {key!r}"
        return (f"the log is damaged at offset(s) {places} {after}: a newer version may have been lost there"
                " (imstore verify names the damage)")  # fmt: skip

    def _resolve(self, key: str, version: int | str | None, at: int | None) -> Version:
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
        row = index_query(lambda: index.version(key, number))
        if row is None:
            latest = index_query(lambda: index.latest_version(key))
            if latest is None:
                raise KeyNotFound(f"no key {key!r}")
            if number < latest[0]:
                # Versions are numbered without gaps: the log lost this one, or the index did.
                damage = self.indexer.damage_note()
                if damage is None:
                    raise CorruptIndex(f"the index lacks version {number} of {key!r}: run imstore reindex")
                raise CorruptLog(f"version {number} of {key!r} was lost to damage in the log: {damage}")
            raise VersionNotFound(f"key {key!r} has no version {number} (latest is {latest[0]})")
        self.indexer.confirm(row)
        return Version.from_row(row)

    def _version_at(self, key: str, at: int) -> Version:
        index = self._current_index()
        row = index_query(lambda: index.version_at(key, at))
        if row is None:
            if index_query(lambda: index.latest_version(key)) is None:
                raise KeyNotFound(f"no key {key!r}")
            raise VersionNotFound(f"key {key!r} had no version at {format_time(at)}")
        self.indexer.confirm(row)
        found = Version.from_row(row)
        if found.deleted:
            raise KeyDeleted(f"key {key!r} was deleted at {format_time(at)} (version {found.version})")
        return found

    def _latest_from_index(self, key: str) -> Version:
        index = self._current_index()
        found_row = index_query(lambda: index.latest_row(key))  # the row and its place in the log: one query
        if found_row is None:
            if index_query(lambda: index.latest_version(key)) is None:
                raise KeyNotFound(f"no key {key!r}")
            raise CorruptIndex(f"the index names a latest version of {key!r} it does not hold: run imstore reindex")
        row, span = found_row
        self.indexer.confirm(row, span)
        found = Version.from_row(row)
        if self.cache is not None:
            self.cache.note_latest(found.to_row(), lambda: index_query(lambda: index.state().seq))
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
        found = self.resolve(key, version, at)  # confirmed against the log
        return found, self._reader_of(found)

    def open_stored(self, found: Version, *, through_cache: bool = True) -> ObjectReader:
        """A verified reader of the bytes of a version taken from a listing (ls, history, log).

        The version is first confirmed against its record in the log, so an edited index
        cannot make an export serve another version's bytes. through_cache=False reads
        the store alone (an export must not churn the read cache).
        """
        if not found.stale:
            self.indexer.confirm(found)
        return self._reader_of(found, through_cache=through_cache)

    def _reader_of(self, found: Version, *, through_cache: bool = True) -> ObjectReader:
        """The log says these bytes were stored: their absence is damage, not "not found"."""
        try:
            if not through_cache:
                return self.objects.open(found.hash)
            return self._open_object_id(found.hash, found.size)
        except ObjectNotFound:
            raise CorruptObject(f"object {found.hash} of {found.key!r} version {found.version} is missing from the store") from None

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
            return self.cache.reader(object_id, data)  # type: ignore[return-value]
        reader = self.objects.open(object_id)
        if reader.size > self.cache.max_object_size:
            return reader
        data = reader.read()
        self.cache.put_object(object_id, data)
        return self.cache.reader(object_id, data)  # type: ignore[return-value]

    def cat(self, hash_or_prefix: str) -> bytes:
        return self.open_object(hash_or_prefix).read()

    def history(self, key: str, limit: int | None = None) -> list[Version]:
        """Every version of key, oldest first (with limit: the newest `limit`)."""
        validate_key(key)
        index = self._current_index()
        rows = index_query(lambda: index.history(key, limit))
        if not rows:
            raise KeyNotFound(f"no key {key!r}")
        return [Version.from_row(row) for row in reversed(rows)]

    def ls(self, prefix: str = "", *, include_deleted: bool = False, limit: int | None = None) -> list[Version]:
        """The latest version of each key that starts with prefix, in key order."""
        index = self._current_index()
        return [Version.from_row(row) for row in index_query(lambda: index.ls(prefix, include_deleted, limit))]

    def log_records(self, after: int = 0, limit: int | None = None) -> list[Version]:
        """The global log as Versions (not records.Record: the name is the library API's), every key, in commit order."""
        index = self._current_index()
        return [Version.from_row(row) for row in index_query(lambda: index.log(after, limit))]

    # Pages of listings, read in slices with flat memory (the server's /v1/keys and /v1/log, HARDENING S2).
    def ls_page_end(self, prefix: str, include_deleted: bool, after: str | None, limit: int) -> tuple[str | None, bool]:
        """(the limit-th live key after `after`, or None if there are fewer; whether a key follows it)."""
        index = self._current_index()
        return index_query(lambda: index.ls_page_end(prefix, include_deleted, after, limit))

    def ls_page(self, prefix: str, include_deleted: bool, after: str | None, upto: str | None, limit: int) -> list[Version]:
        """Like ls, for keys after `after` and up to `upto` (each optional), at most limit of them."""
        index = self._current_index()
        return [Version.from_row(row) for row in index_query(lambda: index.ls_page(prefix, include_deleted, after, upto, limit))]

    def log_page_end(self, after: int, limit: int) -> tuple[int | None, bool]:
        """(the seq of the limit-th record after `after`, or None if there are fewer; whether a record follows it)."""
        index = self._current_index()
        return index_query(lambda: index.log_page_end(after, limit))

    def log_page(self, after: int, upto: int | None, limit: int) -> list[Version]:
        """Like log_records, for records after seq `after` and up to seq `upto` (if given)."""
        index = self._current_index()
        return [Version.from_row(row) for row in index_query(lambda: index.log_page(after, upto, limit))]

    # ================================================================ checking
    # ================================================================ proofs (docs/DESIGN.md P1-P6)
    # proofs.py loads `cryptography` (~20 ms): only the commands that sign or check pay for it.
    def verifier_key(self) -> str:
        """The note verifier key of this store's checkpoint signing key (made on first use)."""
        from . import proofs

        return str(proofs.signer(self).verifier)

    def checkpoint(self) -> str:
        """A signed checkpoint (C2SP tlog-checkpoint in a signed note) of the log as it is now."""
        from . import proofs

        return proofs.checkpoint(self)

    def prove(self, key: str, version: int | str | None = None, at: int | None = None) -> dict:
        """The inclusion proof document of key's version (latest, a number, or the one current at `at`)."""
        from . import proofs

        return proofs.prove(self, key, version, at)

    def prove_since(self, old_checkpoint: str) -> dict:
        """The consistency proof document from old_checkpoint to now; ProofFailed if the log does not extend it."""
        from . import proofs

        return proofs.prove_since(self, old_checkpoint)

    def verify(self, progress: Callable[[int, int], None] | None = None) -> VerifyReport:
        """Check the chain, every record, every object's hash and the index against the log."""
        from .verify import verify

        return verify(self.log, self.objects, self.indexer, progress)
