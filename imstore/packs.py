"""Pack files: many objects of one batch in one file, found through a sorted index.

    objects/pack/pack-<id>.pack   "IMPK" u32 version | object bytes ... | 32-byte digest of the entries
    objects/pack/pack-<id>.idx    "IMIX" u32 version | u64 count | u64 pack size | 32-byte entries digest
                                  | count x (32-byte hash | u64 offset | u64 length), sorted by hash
                                  | 32-byte BLAKE3 of everything before it (the checksum trailer)

<id> is the entries digest, so a pack's name says what it holds. Both files are
written under `.tmp-*` names, fsynced, renamed (pack first, index last: a pack
without an index is never looked at) and the directory is fsynced; only then may
a log record refer to the objects. Objects are raw slices, so every read is the
usual verified read of (path, offset, length). An index whose trailer does not
check out is never used, and `problems()` names it for verify.
"""

from __future__ import annotations

import mmap
import os
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from .errors import from_os_error
from .fsio import crash_point, fsync_dir, fsync_fd, write_all, write_new_file
from .hashing import blake3
from .objects import TEMP_PREFIX, ObjectLocation

__all__ = ["PackWriter", "PackIndex", "PackSet", "RepackResult", "repack", "DamagedPack"]

PACK_MAGIC = b"IMPK"
INDEX_MAGIC = b"IMIX"
FORMAT_VERSION = 1
PACK_HEADER = struct.Struct(">4sI")
INDEX_HEADER = struct.Struct(">4sIQQ32s")
ENTRY = struct.Struct(">32sQQ")
DIGEST_SIZE = 32
WRITE_BUFFER = 1 << 20


def entries_digest(entries: list[tuple[bytes, int, int]]) -> bytes:
    """The digest that names a pack: BLAKE3 over its sorted (hash, offset, length) entries."""
    hasher = blake3()
    for entry in entries:
        hasher.update(ENTRY.pack(*entry))
    return hasher.digest()


def encode_index(entries: list[tuple[bytes, int, int]], pack_size: int, digest: bytes) -> bytes:
    body = INDEX_HEADER.pack(INDEX_MAGIC, FORMAT_VERSION, len(entries), pack_size, digest) + b"".join(ENTRY.pack(*e) for e in entries)
    return body + blake3(body).digest()


class PackWriter:
    """Appends objects to a temp pack; `finish()` makes pack and index durable and visible.

    Not thread-safe: one thread appends (reading and hashing may run elsewhere).
    """

    def __init__(self, pack_dir: Path):
        self.pack_dir = Path(pack_dir)
        stem = f"{TEMP_PREFIX}pack-{os.getpid()}-{time.monotonic_ns()}-{os.urandom(4).hex()}"
        self.temp_pack = self.pack_dir / f"{stem}.pack"
        self.temp_index = self.pack_dir / f"{stem}.idx"
        self._entries: dict[bytes, tuple[int, int]] = {}
        self._fd = -1  # the temp pack is created by the first add: an import with nothing new touches no file
        self._size = PACK_HEADER.size
        self._buffer = bytearray(PACK_HEADER.pack(PACK_MAGIC, FORMAT_VERSION))
        self.path: Path | None = None

    def __contains__(self, object_id: str) -> bool:
        return bytes.fromhex(object_id) in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size(self) -> int:
        return self._size

    def add(self, object_id: str, data: bytes | memoryview) -> bool:
        """Append data (whose hash the caller computed) unless the pack has it; True if appended."""
        raw = bytes.fromhex(object_id)
        if raw in self._entries:
            return False
        self._buffer += data  # small objects are gathered into big writes: one syscall per MiB, not per file
        if len(self._buffer) >= WRITE_BUFFER:
            self._flush()
        self._entries[raw] = (self._size, len(data))
        self._size += len(data)
        return True

    def _flush(self) -> None:
        try:
            if self._fd < 0:
                self._fd = os.open(self.temp_pack, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            write_all(self._fd, self._buffer)
        except OSError as exc:
            raise from_os_error(exc, "writing a pack") from None
        self._buffer = bytearray()

    def finish(self) -> Path | None:
        """fsync the pack, write and fsync its index, rename both into place, fsync the dir.

        Returns the pack's path, or None (and nothing on disk) when nothing was added.
        """
        if not self._entries:
            self.abort()
            return None
        entries = sorted((raw, offset, length) for raw, (offset, length) in self._entries.items())
        digest = entries_digest(entries)
        name = f"pack-{digest.hex()[:40]}"
        try:
            self._buffer += digest
            self._flush()
            pack_size = self._size + DIGEST_SIZE
            fsync_fd(self._fd)
            os.close(self._fd)
            self._fd = -1
            crash_point("pack-fsynced")
            write_new_file(self.temp_index, encode_index(entries, pack_size, digest), 0o444)
            final_pack = self.pack_dir / f"{name}.pack"
            os.chmod(self.temp_pack, 0o444)
            os.rename(self.temp_pack, final_pack)
            crash_point("pack-renamed")
            os.rename(self.temp_index, self.pack_dir / f"{name}.idx")
            fsync_dir(self.pack_dir)
            crash_point("pack-installed")
        except OSError as exc:
            self.abort()
            raise from_os_error(exc, "installing a pack") from None
        self.path = final_pack
        return final_pack

    def abort(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._remove_temps()

    def _remove_temps(self) -> None:
        for path in (self.temp_pack, self.temp_index):
            try:
                os.unlink(path)
            except OSError:
                pass



MAPPED_INDEX = 16 << 20  # pack indexes bigger than this are memory-mapped rather than read (see PackIndex)

class DamagedPack(Exception):
    """A pack index that fails its checks (the caller turns it into a verify problem)."""


class PackEntry(NamedTuple):
    object_id: str
    offset: int
    length: int


class PackIndex:
    """One loaded .idx: binary search over its fixed-width sorted entries, read into memory (mmap when big).

    A server worker has a PackSet per thread and a store may hold thousands of
    packs: an mmap keeps a file descriptor open for its life, so small indexes
    (nearly all) are read whole instead, and hold none (bench_soak found workers
    out of descriptors at ~2,500 packs).
    """

    def __init__(self, index_path: Path):
        self.index_path = Path(index_path)
        self.pack_path = self.index_path.with_suffix(".pack")
        with open(self.index_path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size < INDEX_HEADER.size + DIGEST_SIZE:
                raise DamagedPack(f"pack index {self.index_path.name} is too short")
            if size <= MAPPED_INDEX:
                self._map = handle.read()
                if len(self._map) != size:
                    raise DamagedPack(f"pack index {self.index_path.name} changed while it was read")
            else:
                self._map = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        view = self._map
        magic, version, count, pack_size, digest = INDEX_HEADER.unpack_from(view, 0)
        if magic != INDEX_MAGIC or version != FORMAT_VERSION:
            raise DamagedPack(f"pack index {self.index_path.name} has a bad header")
        if size != INDEX_HEADER.size + count * ENTRY.size + DIGEST_SIZE:
            raise DamagedPack(f"pack index {self.index_path.name} has the wrong length for {count} entries")
        if blake3(view[: size - DIGEST_SIZE]).digest() != view[size - DIGEST_SIZE :]:
            raise DamagedPack(f"pack index {self.index_path.name} fails its checksum")
        self.count = count
        self.pack_size = pack_size
        self.digest = digest

    def _hash_at(self, position: int) -> bytes:
        start = INDEX_HEADER.size + position * ENTRY.size
        return self._map[start : start + DIGEST_SIZE]

    def _entry_at(self, position: int) -> PackEntry:
        raw, offset, length = ENTRY.unpack_from(self._map, INDEX_HEADER.size + position * ENTRY.size)
        return PackEntry(raw.hex(), offset, length)

    def _lower_bound(self, raw: bytes) -> int:
        low, high = 0, self.count
        while low < high:
            middle = (low + high) // 2
            if self._hash_at(middle) < raw:
                low = middle + 1
            else:
                high = middle
        return low

    def find(self, object_id: str) -> PackEntry | None:
        raw = bytes.fromhex(object_id)
        position = self._lower_bound(raw)
        if position < self.count and self._hash_at(position) == raw:
            return self._entry_at(position)
        return None

    def entries(self) -> Iterator[PackEntry]:
        for position in range(self.count):
            yield self._entry_at(position)

    def ids_with_prefix(self, prefix: str) -> Iterator[str]:
        position = self._lower_bound(bytes.fromhex(prefix[: len(prefix) // 2 * 2]))
        while position < self.count:
            object_id = self._hash_at(position).hex()
            if object_id.startswith(prefix):
                yield object_id
            elif object_id[: len(prefix)] > prefix:
                return
            position += 1

    def check_pack_file(self) -> str | None:
        """A problem with the .pack file itself (length, header, trailer), or None."""
        try:
            with open(self.pack_path, "rb") as handle:
                size = os.fstat(handle.fileno()).st_size
                header = handle.read(PACK_HEADER.size)
                handle.seek(max(size - DIGEST_SIZE, 0))
                trailer = handle.read(DIGEST_SIZE)
        except OSError as exc:
            return f"pack {self.pack_path.name} cannot be read: {exc.strerror or exc}"
        if size != self.pack_size:
            return f"pack {self.pack_path.name} is {size} bytes, its index says {self.pack_size}"
        if header != PACK_HEADER.pack(PACK_MAGIC, FORMAT_VERSION) or trailer != self.digest:
            return f"pack {self.pack_path.name} has a damaged header or trailer"
        return None

    def close(self) -> None:
        if isinstance(self._map, mmap.mmap):
            self._map.close()


class PackSet:
    """Every usable pack under objects/pack/: the `packs` hook of ObjectStore.

    Indexes are loaded lazily and the directory is listed again when it changed,
    so packs written by other processes (imports, repacks) are found.
    """

    def __init__(self, pack_dir: Path):
        self.pack_dir = Path(pack_dir)
        self._packs: dict[str, PackIndex] = {}
        self._damaged: dict[str, str] = {}
        self._listed_mtime: int | None = None

    def refresh(self, force: bool = False) -> None:
        try:
            mtime = os.stat(self.pack_dir).st_mtime_ns
            if not force and mtime == self._listed_mtime:
                return
            names = {name for name in os.listdir(self.pack_dir) if name.startswith("pack-") and name.endswith(".idx")}
        except FileNotFoundError:
            mtime, names = None, set()
        except OSError as exc:
            raise from_os_error(exc, "listing packs") from None
        for gone in set(self._packs) - names:
            self._packs.pop(gone).close()
        for gone in set(self._damaged) - names:
            del self._damaged[gone]
        for name in sorted(names - set(self._packs) - set(self._damaged)):
            try:
                self._packs[name] = PackIndex(self.pack_dir / name)
            except DamagedPack as exc:
                self._damaged[name] = str(exc)
            except FileNotFoundError:
                continue  # removed by a repack between listing and opening
            except OSError as exc:
                # Out of descriptors, EIO: the store is unavailable now, the pack is not damaged.
                # Marking it damaged would answer 404 for its objects until the process restarts.
                raise from_os_error(exc, f"reading pack index {name}") from None
            except ValueError as exc:
                self._damaged[name] = f"pack index {name} cannot be read: {exc}"
        self._listed_mtime = mtime

    def _find(self, object_id: str) -> tuple[PackIndex, PackEntry] | None:
        for pack in self._packs.values():
            entry = pack.find(object_id)
            if entry is not None:
                return pack, entry
        return None

    def locate(self, object_id: str) -> ObjectLocation | None:
        if self._listed_mtime is None:
            self.refresh()
        found = self._find(object_id)
        if found is None:
            self.refresh()
            found = self._find(object_id)
        if found is None:
            return None
        pack, entry = found
        return ObjectLocation(pack.pack_path, entry.offset, entry.length)

    def contains(self, object_id: str) -> bool:
        """Whether a pack loaded so far holds object_id (no directory listing: for hot loops)."""
        return self._find(object_id) is not None

    def ids(self) -> Iterator[str]:
        self.refresh()
        seen: set[str] = set()
        for pack in list(self._packs.values()):
            for entry in pack.entries():
                if entry.object_id not in seen:
                    seen.add(entry.object_id)
                    yield entry.object_id

    def ids_with_prefix(self, prefix: str) -> set[str]:
        self.refresh()
        return {object_id for pack in self._packs.values() for object_id in pack.ids_with_prefix(prefix)}

    def packs(self) -> list[PackIndex]:
        self.refresh()
        return list(self._packs.values())

    def problems(self) -> list[str]:
        """Damaged indexes and pack files (verify reports each)."""
        self.refresh(force=True)
        found = list(self._damaged.values())
        found.extend(problem for pack in self._packs.values() if (problem := pack.check_pack_file()))
        return found

    def orphans(self) -> list[Path]:
        """Packs without an index (an install cut short): harmless, never read."""
        try:
            names = os.listdir(self.pack_dir)
        except OSError:
            return []
        indexed = {name[:-4] for name in names if name.endswith(".idx")}
        packs = [name for name in names if name.startswith("pack-") and name.endswith(".pack")]
        return sorted(self.pack_dir / name for name in packs if name[:-5] not in indexed)

    def close(self) -> None:
        for pack in self._packs.values():
            pack.close()
        self._packs.clear()
        self._listed_mtime = None


# Packs smaller than this are merged by a repack; bigger ones are left alone.
SMALL_PACK = 256 << 20


class RepackResult(NamedTuple):
    packs_merged: int
    objects: int
    bytes: int
    pack: Path | None
    problems: tuple[str, ...] = ()


def repack(pack_set: PackSet, small: int = SMALL_PACK, superseded=None) -> RepackResult:
    """Merge the small packs into one. The caller holds the writers' lock.

    Every object is copied as a verified slice; the new pack is durable and its
    index loads and holds every copied object before any old pack is removed. A
    pack with a damaged object is left in place (and named in problems), so no
    byte that a record may need is ever deleted, unless superseded(id) says a good
    copy of that object is kept elsewhere (a loose copy written by repair: R12):
    then the damaged slice is dropped with its pack.
    """
    candidates = sorted((p for p in pack_set.packs() if p.pack_size < small), key=lambda p: p.pack_path.name)
    if len(candidates) < 2:
        return RepackResult(0, 0, 0, None)
    writer = PackWriter(pack_set.pack_dir)
    problems: list[str] = []
    removable: list[PackIndex] = []
    copied: set[str] = set()
    try:
        for pack in candidates:
            pack_problems = _copy_pack(pack, writer, copied, superseded)
            problems.extend(pack_problems)
            if not pack_problems:
                removable.append(pack)
        new_path = writer.finish()
    except BaseException:
        writer.abort()
        raise
    if new_path is None:
        return RepackResult(0, 0, 0, None, tuple(problems))
    merged = PackIndex(new_path.with_suffix(".idx"))  # checks the trailer of what we just wrote
    try:
        missing = [object_id for object_id in copied if merged.find(object_id) is None]
    finally:
        merged.close()
    if missing:
        raise DamagedPack(f"the new pack {new_path.name} lacks {len(missing)} objects; old packs kept")
    for pack in removable:
        if pack.pack_path == new_path:
            continue
        try:
            os.unlink(pack.index_path)  # index first: a pack without an index is never read
            os.unlink(pack.pack_path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise from_os_error(exc, f"removing the merged pack {pack.pack_path.name}") from None
    fsync_dir(pack_set.pack_dir)
    pack_set.refresh(force=True)
    return RepackResult(len(removable), len(copied), writer.size, new_path, tuple(problems))


def _copy_pack(pack: PackIndex, writer: PackWriter, copied: set[str], superseded=None) -> list[str]:
    problems = []
    try:
        with open(pack.pack_path, "rb") as handle:
            for entry in sorted(pack.entries(), key=lambda e: e.offset):
                handle.seek(entry.offset)
                data = handle.read(entry.length)
                if len(data) != entry.length or blake3(data).hexdigest() != entry.object_id:
                    if superseded is None or not superseded(entry.object_id):
                        problems.append(f"object {entry.object_id} in {pack.pack_path.name} is damaged; that pack is kept")
                    continue
                writer.add(entry.object_id, data)
                copied.add(entry.object_id)
    except OSError as exc:
        problems.append(f"pack {pack.pack_path.name} cannot be read ({exc.strerror or exc}); it is kept")
    return problems
