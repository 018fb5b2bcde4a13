"""The content-addressed object directory: objects/ab/<62 hex>, raw bytes, 0444.

Write order (restic's local backend, dulwich's add_object): temp file under
objects/ → stream + hash → fsync → link to the final name (an existing name is a
dedup hit) → fsync the shard dir (and objects/ when the shard is new) → 0444.
Only fsynced files ever get a final name, so a crash leaves only `.tmp-*` files
and an existing object can be trusted to be complete.
"""

from __future__ import annotations

import mmap
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from .diskio import MANY_AT_ONCE, copy_span, in_parallel, start_writeback, sync_one
from .errors import AmbiguousPrefix, CorruptObject, ImstoreError, InvalidInput, ObjectNotFound, from_os_error
from .fsio import CHUNK_SIZE, crash_point, fsync_dir, fsync_fd, require_directory, write_all
from .hashing import OBJECT_ID_LEN, blake3, validate_object_id, validate_prefix

if TYPE_CHECKING:
    from .packs import PackWriter

__all__ = ["ObjectStore", "ObjectReader", "CHUNK_SIZE", "TEMP_PREFIX"]

TEMP_PREFIX = ".tmp-"
# While a big object streams in, ask the kernel to start writing every this many
# bytes to disk, so the final fsync finds little left to do (bench_put_large.py).
WRITEBACK_STEP = 16 << 20
STALE_TEMP_SECONDS = 3600
MAPPED_VERIFY = 16 << 20  # verify() hashes objects this big through mmap, on every core (_verify_mapped)
MAPPED_WINDOW = 16 << 20


class ObjectLocation(NamedTuple):
    """Where an object's bytes are: a whole loose file, or a slice of a pack.

    (A NamedTuple rather than a frozen dataclass: cheaper to define at start-up.)
    """

    path: Path
    offset: int
    length: int


class ObjectReader:
    """Reads one object and checks every byte against its hash.

    `read()` verifies before it returns anything. `chunks()` verifies as it goes
    and raises CorruptObject after the last chunk on a mismatch, so a caller that
    streams must only commit its output (rename, send the last byte) at the end;
    `verify()` is a separate full pass for callers that cannot do that (stdout).
    """

    def __init__(self, object_id: str, location: ObjectLocation, relocate=None):
        self.object_id = object_id
        self.location = location
        self.size = location.length
        self._relocate = relocate  # finds the object again if its pack was merged away by a repack

    def local_file(self) -> ObjectLocation | None:
        """(path, offset, length) of the bytes in a local file, for sendfile and ranges (a cached reader: None)."""
        return self.location

    def _open(self):
        try:
            return open(self.location.path, "rb", buffering=0)
        except FileNotFoundError:
            moved = self._relocate() if self._relocate is not None else None
            if moved is None or moved.length != self.size:
                raise
            self.location = moved
            return open(moved.path, "rb", buffering=0)

    def _raw_chunks(self, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
        try:
            with self._open() as handle:
                if self.location.offset:
                    handle.seek(self.location.offset)
                remaining = self.location.length
                while remaining > 0:
                    chunk = handle.read(min(chunk_size, remaining))
                    if not chunk:
                        break
                    remaining -= len(chunk)
                    yield chunk
        except FileNotFoundError:
            raise ObjectNotFound(f"object {self.object_id} vanished while being read") from None
        except OSError as exc:
            raise from_os_error(exc, f"reading object {self.object_id}") from None

    def chunks(self, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
        hasher = blake3()
        seen = 0
        for chunk in self._raw_chunks(chunk_size):
            hasher.update(chunk)
            seen += len(chunk)
            yield chunk
        self._check(hasher, seen)

    def verify(self) -> None:
        if self.size >= MAPPED_VERIFY and self._verify_mapped():
            return
        hasher = blake3()
        seen = 0
        for chunk in self._raw_chunks():
            hasher.update(chunk)
            seen += len(chunk)
        self._check(hasher, seen)

    def _verify_mapped(self) -> bool:
        """verify() for a big object: hash it through a memory map with BLAKE3's threads.

        4.1 GB/s against 1.8-2.0 GB/s read in chunks, for 1 GiB on this 2-core machine: the
        server verifies a big object before the gateway sends it, so this is half its wait.
        False (and nothing checked) when it cannot be mapped: the chunked read then
        reports what is wrong. The map covers only bytes the file holds when mapped; objects
        are never shortened by imstore (a file cut by someone else meanwhile: SIGBUS).
        """
        import mmap

        try:
            with self._open() as handle:
                end = self.location.offset + self.size
                if os.fstat(handle.fileno()).st_size < end:
                    return False
                hasher = blake3(max_threads=blake3.AUTO)
                position = self.location.offset
                while position < end:  # one window at a time: the process maps 16 MiB at most, not the object
                    start = position - position % mmap.ALLOCATIONGRANULARITY
                    stop = min(end, start + MAPPED_WINDOW)
                    with mmap.mmap(handle.fileno(), stop - start, access=mmap.ACCESS_READ, offset=start) as mapped:
                        with memoryview(mapped) as view, view[position - start :] as content:
                            hasher.update(content)
                    position = stop
        except (OSError, ValueError):
            return False
        self._check(hasher, self.size)
        return True

    def read(self) -> bytes:
        data = b"".join(self._raw_chunks())
        hasher = blake3(data)
        self._check(hasher, len(data))
        return data

    def _check(self, hasher, seen: int) -> None:
        if seen != self.size or hasher.hexdigest() != self.object_id:
            raise CorruptObject(f"object {self.object_id} is damaged: its bytes do not hash to its name ({self.location.path})")


class ObjectStore:
    """Loose objects under one `objects/` directory (packs are looked up by `packs`)."""

    def __init__(self, root: Path, packs=None):
        self.root = Path(root)
        self.packs = packs  # optional pack lookup with .locate(id) and .ids(); see packs.py
        self._durable_shards: set[Path] = set()  # shards whose entry in objects/ this process fsynced

    # ---------------------------------------------------------------- paths
    def loose_path(self, object_id: str) -> Path:
        validate_object_id(object_id)
        return self.root / object_id[:2] / object_id[2:]

    def _check_root(self) -> None:
        require_directory(self.root, "the store's objects directory")

    # ---------------------------------------------------------------- reading
    def locate(self, object_id: str) -> ObjectLocation | None:
        path = self.loose_path(object_id)
        try:
            size = os.stat(path).st_size
        except FileNotFoundError:
            size = None
        except NotADirectoryError:
            size = None
        except OSError as exc:
            raise from_os_error(exc, f"looking up object {object_id}") from None
        if size is not None:
            return ObjectLocation(path, 0, size)
        if self.packs is not None:
            return self.packs.locate(object_id)
        return None

    def exists(self, object_id: str) -> bool:
        """Is the object stored, loose or packed? (No pathlib: imports ask this once per file.)"""
        validate_object_id(object_id)
        if os.path.exists(f"{self.root}/{object_id[:2]}/{object_id[2:]}"):
            return True
        return self.packs is not None and self.packs.contains(object_id)

    def good_loose_copy(self, object_id: str) -> bool:
        """Is there a loose copy of object_id whose bytes hash to it? (It supersedes a damaged pack entry: R12.)"""
        path = self.loose_path(object_id)
        try:
            ObjectReader(object_id, ObjectLocation(path, 0, os.stat(path).st_size)).verify()
        except (OSError, ImstoreError):
            return False
        return True

    def new_pack(self) -> PackWriter:
        """A pack to add many objects to; they become visible (durably) on finish()."""
        from .packs import PackWriter  # noqa: F811 -- here: packs.py imports this module

        return PackWriter(self.packs.pack_dir)

    def refresh(self) -> None:
        """See packs added by other processes since we last looked."""
        if self.packs is not None:
            self.packs.refresh()

    def open(self, object_id: str) -> ObjectReader:
        location = self.locate(object_id)
        if location is None:
            self._check_root()
            raise ObjectNotFound(f"no object {object_id}")
        return ObjectReader(object_id, location, relocate=lambda: self._relocate(object_id))

    def _relocate(self, object_id: str) -> ObjectLocation | None:
        if self.packs is not None:
            self.packs.refresh(force=True)
        return self.locate(object_id)

    def read(self, object_id: str) -> bytes:
        return self.open(object_id).read()

    def resolve_prefix(self, prefix: str) -> str:
        """Full id for a hash or a unique prefix of 8+ hex digits."""
        prefix = validate_prefix(prefix)
        if len(prefix) == OBJECT_ID_LEN:
            if self.locate(prefix) is None:
                self._check_root()
                raise ObjectNotFound(f"no object {prefix}")
            return prefix
        self._check_root()
        matches = set()
        shard = self.root / prefix[:2]
        try:
            names = os.listdir(shard)
        except (FileNotFoundError, NotADirectoryError):
            names = []
        except OSError as exc:
            raise from_os_error(exc, "listing objects") from None
        rest = prefix[2:]
        matches.update(prefix[:2] + name for name in names if name.startswith(rest) and len(name) == OBJECT_ID_LEN - 2)
        if self.packs is not None:
            matches.update(self.packs.ids_with_prefix(prefix))
        if not matches:
            raise ObjectNotFound(f"no object with hash prefix {prefix}")
        if len(matches) > 1:
            raise AmbiguousPrefix(f"hash prefix {prefix} matches {len(matches)} objects; give more digits")
        return matches.pop()

    def iter_loose_ids(self) -> Iterator[str]:
        self._check_root()
        for shard in sorted(os.listdir(self.root)):
            if len(shard) != 2:
                continue
            shard_path = self.root / shard
            if not shard_path.is_dir():
                continue
            for name in sorted(os.listdir(shard_path)):
                if len(name) == OBJECT_ID_LEN - 2 and not name.startswith("."):
                    yield shard + name

    def iter_ids(self) -> Iterator[str]:
        yield from self.iter_loose_ids()
        if self.packs is not None:
            yield from self.packs.ids()

    # ---------------------------------------------------------------- writing
    def write_stream(self, chunks: Iterable[bytes], max_size: int | None = None) -> tuple[str, int]:
        """Store the bytes of chunks durably; return (object_id, size). (add_stream without its flag.)"""
        object_id, size, _created = self.add_stream(chunks, max_size)
        return object_id, size

    def add_stream(self, chunks: Iterable[bytes], max_size: int | None = None) -> tuple[str, int, bool]:
        """The one way an object is written loose: durable on return; (object_id, size, created).

        created is False for a dedup hit (the object was there: verified, not rewritten).
        InvalidInput past max_size, with nothing left behind.
        """
        self._check_root()
        fd, temp_path = self._make_temp()
        try:
            hasher = blake3()
            size = 0
            flushed = 0
            try:
                for chunk in chunks:
                    if not chunk:
                        continue
                    size += len(chunk)
                    if max_size is not None and size > max_size:
                        raise InvalidInput(f"content is larger than the limit of {max_size} bytes")
                    hasher.update(chunk)
                    write_all(fd, chunk)
                    if size - flushed >= WRITEBACK_STEP:
                        start_writeback(fd, flushed, size - flushed)
                        flushed = size
                crash_point("object-temp-written")
                fsync_fd(fd)
            except OSError as exc:
                raise from_os_error(exc, "writing an object") from None
            finally:
                os.close(fd)
            crash_point("object-fsynced")
            object_id = hasher.hexdigest()
            created = self._install(temp_path, object_id, size)
            return object_id, size, created
        finally:
            _unlink_quietly(temp_path)

    def add_spans(self, spans: list[tuple[str | os.PathLike, int, int]]) -> tuple[str, int]:
        """The spans (path, offset, length) of files, copied in order by the kernel into one object: adopt()'s answer."""
        self._check_root()
        fd, temp_path = self._make_temp()
        try:
            try:
                for path, offset, length in spans:
                    with open(path, "rb") as source:
                        copy_span(source.fileno(), offset, length, fd)
            except OSError as exc:
                raise from_os_error(exc, "writing an object") from None
            finally:
                os.close(fd)
            return self.adopt(temp_path)
        finally:
            _unlink_quietly(temp_path)

    def adopt(self, path: str | os.PathLike, prefix=None) -> tuple[str, int]:
        """Make the file at path an object by linking it, hashed through a memory map on every core (BLAKE3's
        threads) and fsynced first: (object_id, size). It must never be written again; its other name may go.
        prefix: a HashedPrefix (server/s3/prefixhash.py) of this very file, whose first bytes it has hashed already."""
        try:
            with open(path, "rb") as handle:
                stat = os.fstat(handle.fileno())
                size = stat.st_size
                if prefix is not None and prefix.inode == (stat.st_dev, stat.st_ino) and 0 < prefix.length <= size:
                    hasher, start = prefix.hasher, prefix.length
                else:
                    hasher, start = blake3(max_threads=blake3.AUTO), 0
                if start == 0 and size:
                    hasher.update_mmap(path)
                elif start < size:
                    with mmap.mmap(handle.fileno(), size, access=mmap.ACCESS_READ) as mapped, memoryview(mapped) as view:
                        hasher.update(view[start:])
                crash_point("object-temp-written")
                fsync_fd(handle.fileno())
        except OSError as exc:
            raise from_os_error(exc, "writing an object") from None
        object_id = hasher.hexdigest()
        self._install(os.fspath(path), object_id, size)
        return object_id, size

    def write_bytes(self, data: bytes) -> tuple[str, int]:
        """write_stream of bytes in memory (tests and benchmarks)."""
        return self.write_stream([data])

    def write_many(self, blobs: list[bytes]) -> list[tuple[str, int] | ImstoreError]:
        """Store several in-memory objects durably: (object_id, size) or the error, for each.

        The order of store_stream for every object, with the waits shared: all temp
        files are written before the first fsync (the file system commits them
        together, so the later fsyncs find little left to do), and each shard
        directory is fsynced once, after every link into it. When this returns,
        each object it answered for is as durable as store_stream leaves it.
        """
        if len(blobs) > MANY_AT_ONCE:  # each temp file stays open until its fsync: so many at a time, not a whole long list
            step = MANY_AT_ONCE
            return [answer for start in range(0, len(blobs), step) for answer in self.write_many(blobs[start : start + step])]
        self._check_root()
        answers: list = [None] * len(blobs)
        written: list[tuple[int, int, str]] = []  # (position, fd, temp path)
        try:
            for position, data in enumerate(blobs):
                try:
                    fd, temp_path = self._make_temp()
                except ImstoreError as exc:
                    answers[position] = exc
                    continue
                written.append((position, fd, temp_path))
                try:
                    write_all(fd, data)
                except OSError as exc:
                    answers[position] = from_os_error(exc, "writing an object")
            crash_point("object-temp-written")
            to_sync = [(position, fd) for position, fd, _temp in written if answers[position] is None]
            for (position, _fd), failure in zip(to_sync, in_parallel(fsync_fd, [fd for _position, fd in to_sync]), strict=True):
                if failure is not None:  # never retried into "durable"
                    answers[position] = from_os_error(failure, "writing an object")
            crash_point("object-fsynced")
            directories: set[Path] = set()
            for position, _fd, temp_path in written:
                if answers[position] is None:
                    data = blobs[position]
                    object_id = blake3(data).hexdigest()
                    try:
                        self._install(temp_path, object_id, len(data), directories)
                        answers[position] = (object_id, len(data))
                    except ImstoreError as exc:
                        answers[position] = exc
            shards = [directory for directory in directories if directory != self.root]
            failure = next((failure for failure in in_parallel(fsync_dir, shards) if failure is not None), None)
            if failure is None and self.root in directories:  # a new shard: its entry in objects/ after the shard's own
                failure = sync_one(fsync_dir, self.root)
            if failure is not None:  # then no object of this call is known durable
                failed = from_os_error(failure, "storing objects")
                return [failed if isinstance(answer, tuple) else answer for answer in answers]
            self._durable_shards.update(shards)
            return answers
        finally:
            for _position, fd, temp_path in written:
                os.close(fd)
                _unlink_quietly(temp_path)

    def _make_temp(self) -> tuple[int, str]:
        name = f"{TEMP_PREFIX}{os.getpid()}-{time.monotonic_ns()}-{os.urandom(4).hex()}"
        path = str(self.root / name)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise from_os_error(exc, "creating an object temp file") from None
        return fd, path

    def _install(self, temp_path: str, object_id: str, size: int, directories: set[Path] | None = None) -> bool:
        """Link a durable temp file to its object's name; fsync the directories it changed
        (or, with directories given, add them there for the caller to fsync once)."""
        final = self.loose_path(object_id)
        shard = final.parent
        to_sync = [] if directories is None else None

        def changed(directory: Path) -> None:
            if to_sync is None:
                directories.add(directory)
            else:
                to_sync.append(directory)

        try:
            new_shard = False
            if not shard.is_dir():
                try:
                    os.mkdir(shard, 0o755)
                    new_shard = True
                except FileExistsError:
                    pass
            try:
                # link, not rename: an existing object is never replaced behind a reader's back.
                os.link(temp_path, final)
                linked = True
            except FileExistsError:
                linked = False
            crash_point("object-linked")
            if linked:
                os.chmod(final, 0o444)
                changed(shard)
                if new_shard or shard not in self._durable_shards:  # (its creator may have died before fsyncing objects/)
                    changed(self.root)
            else:
                self._check_existing(final, object_id, size, temp_path)
                # The name may come from a writer that died before its directory fsyncs:
                # make it durable before a record can point at it.
                changed(shard)
                changed(self.root)
            for directory in to_sync or ():
                fsync_dir(directory)
            if to_sync is not None:
                self._durable_shards.add(shard)
            return linked
        except OSError as exc:
            raise from_os_error(exc, f"storing object {object_id}") from None

    def _check_existing(self, final: Path, object_id: str, size: int, temp_path: str) -> None:
        """A dedup hit: make sure the existing file really is this object."""
        reader = ObjectReader(object_id, ObjectLocation(final, 0, os.stat(final).st_size))
        try:
            reader.verify()
            return
        except CorruptObject:
            pass
        # The existing copy is damaged and we hold good bytes: replace it atomically.
        os.chmod(temp_path, 0o444)
        os.replace(temp_path, final)
        fsync_dir(final.parent)

    # ---------------------------------------------------------------- housekeeping
    def check(self) -> tuple[list[str], list[str]]:
        """(problems, notes) for verify, beyond each object's hash: damaged packs, orphan packs, temp files."""
        problems: list[str] = []
        notes: list[str] = []
        if self.packs is not None:
            problems.extend(self.packs.problems())
            for orphan in self.packs.orphans():
                notes.append(f"pack {orphan.name} has no index (an interrupted import); it is never read")
        for temp in self.temp_files():
            try:
                size = f"{temp.stat().st_size} bytes, "
            except OSError:
                size = ""
            notes.append(f"temp file {temp} ({size}left by an interrupted write: a writer removes it once it is an hour old,"
                         " imstore repack at once)")  # fmt: skip
        return problems, notes

    def temp_files(self) -> list[Path]:
        found = []
        for directory, _subdirs, files in os.walk(self.root):
            found.extend(Path(directory) / name for name in files if name.startswith(TEMP_PREFIX))
        return sorted(found)

    def remove_stale_temps(self, max_age: float = STALE_TEMP_SECONDS) -> int:
        """Remove temp files not written to for max_age seconds (the caller holds the writer lock).

        Objects are written before the lock is taken, so a temp file being written
        right now may be in the list: max_age is what tells it from a leftover.
        """
        removed = 0
        cutoff = time.time() - max_age
        for path in self.temp_files():
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
            except OSError:
                pass
        return removed


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass  # already gone, or the directory is: nothing to clean up
