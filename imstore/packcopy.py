"""Copy a source's packs whole into a store that has no log yet (a clone: R13).

A clone of a store whose objects sit in packs would otherwise ask for them one
by one. Instead each pack the source lists and this store lacks is taken as it
is: its index first (its trailer must check out, its entries be sorted and
unique, their digest be the pack's name, and their slices tile the pack from
its header to its trailer), then the pack's bytes, written to a temp file while
every object's slice is hashed against its entry as it arrives. Only once every
object, the header and the trailer checked out is the pack made durable and
installed, in PackWriter's order (pack fsynced, index written and fsynced, pack
renamed, index renamed, directory fsynced). A pack that fails a check is
dropped (nothing installed): its objects, if records name them, are then
fetched one by one, each checked too (replica.py).
"""

from __future__ import annotations

import json
import os
import re
import signal
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

from . import errors
from .diskio import start_writeback
from .errors import BadUpstream, ImstoreError, NotFound, from_os_error
from .fsio import crash_point, fsync_dir, fsync_fd, write_all, write_new_file
from .hashing import blake3
from .objects import TEMP_PREFIX, WRITEBACK_STEP
from .packs import DIGEST_SIZE, ENTRY, FORMAT_VERSION, INDEX_HEADER, INDEX_MAGIC, PACK_HEADER, PACK_MAGIC, entries_digest

__all__ = ["PACK_NAME", "PackCopy", "PackTaker", "check_index", "receive_pack", "take_packs", "pack_ids"]

PACK_NAME = re.compile(r"pack-[0-9a-f]{40}")


class PackCopy(NamedTuple):
    """The checked index of a source's pack: its name, size, the index bytes and the entries in offset order."""

    name: str
    size: int
    index: bytes
    entries: list[tuple[bytes, int, int]]  # (raw id, offset, length), by offset
    digest: bytes


def check_index(name: str, size: int, data: bytes) -> PackCopy:
    """The source's index of pack `name` (`size` bytes), checked whole, or BadUpstream."""
    if not PACK_NAME.fullmatch(name):
        raise BadUpstream(f"the source lists a pack named {name[:60]!r}, which is not a pack's name")
    if len(data) < INDEX_HEADER.size + DIGEST_SIZE:
        raise BadUpstream(f"the source's index of {name} is too short")
    magic, version, count, pack_size, digest = INDEX_HEADER.unpack_from(data, 0)
    if magic != INDEX_MAGIC or version != FORMAT_VERSION or len(data) != INDEX_HEADER.size + count * ENTRY.size + DIGEST_SIZE:
        raise BadUpstream(f"the source's index of {name} has a bad header or length")
    if blake3(memoryview(data)[:-DIGEST_SIZE]).digest() != data[-DIGEST_SIZE:]:
        raise BadUpstream(f"the source's index of {name} fails its checksum")
    entries = list(ENTRY.iter_unpack(memoryview(data)[INDEX_HEADER.size : -DIGEST_SIZE]))
    if any(entries[n][0] >= entries[n + 1][0] for n in range(len(entries) - 1)):
        raise BadUpstream(f"the source's index of {name} is not sorted by hash")
    if entries_digest(entries) != digest or f"pack-{digest.hex()[:40]}" != name or pack_size != size:
        raise BadUpstream(f"the source's index of {name} does not match the pack's name or size")
    by_offset = sorted(entries, key=lambda entry: entry[1])
    position = PACK_HEADER.size
    for _raw, offset, length in by_offset:
        if offset != position or length == 0:  # every byte of the pack belongs to one checked object
            raise BadUpstream(f"the source's pack {name} has bytes that belong to no object (at offset {position})")
        position += length
    if position + DIGEST_SIZE != size:
        raise BadUpstream(f"the source's pack {name} is {size} bytes, its objects end at {position}")
    return PackCopy(name, size, data, by_offset, digest)


def receive_pack(pack_dir: Path, copy: PackCopy, pieces: Iterable[bytes | memoryview]) -> None:
    """Write the pack's bytes from pieces, every object checked against its entry; install it, durable.

    BadUpstream (and nothing installed) if any byte is not what the index promises.
    """
    stem = f"{TEMP_PREFIX}pack-{os.getpid()}-{os.urandom(6).hex()}"
    temp_pack, temp_index = pack_dir / f"{stem}.pack", pack_dir / f"{stem}.idx"
    try:
        fd = os.open(temp_pack, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            _write_checked(fd, copy, pieces)
            fsync_fd(fd)
        finally:
            os.close(fd)
        crash_point("pack-fsynced")
        write_new_file(temp_index, copy.index, 0o444)
        os.chmod(temp_pack, 0o444)
        os.rename(temp_pack, pack_dir / f"{copy.name}.pack")
        crash_point("pack-renamed")
        os.rename(temp_index, pack_dir / f"{copy.name}.idx")
        fsync_dir(pack_dir)
        crash_point("pack-installed")
    except OSError as exc:
        raise from_os_error(exc, f"writing the copy of pack {copy.name}") from None
    finally:
        for temp in (temp_pack, temp_index):
            try:
                os.unlink(temp)
            except OSError:
                pass  # renamed into place, or never made


def _segments(copy: PackCopy) -> Iterator[tuple[int, bytes, bool]]:
    """(end offset, what the bytes up to it must be or hash to, hashed?) for header, each object, trailer."""
    yield PACK_HEADER.size, PACK_HEADER.pack(PACK_MAGIC, FORMAT_VERSION), False
    for raw, offset, length in copy.entries:
        yield offset + length, raw, True
    yield copy.size, copy.digest, False


def _write_checked(fd: int, copy: PackCopy, pieces: Iterable[bytes | memoryview]) -> None:
    """Write each piece as it comes and check the pack's segments across them; BadUpstream on the first wrong byte."""
    segments = _segments(copy)
    end, expected, hashed = next(segments)
    hasher, literal = blake3(), bytearray()
    offset = flushed = 0
    for piece in pieces:
        view = memoryview(piece)
        if offset + len(view) > copy.size:
            raise BadUpstream(f"the source sent more than the {copy.size} bytes of pack {copy.name}")
        write_all(fd, view)
        position = 0
        while position < len(view):
            take = min(len(view) - position, end - offset)
            part = view[position : position + take]
            if hashed:
                hasher.update(part)
            else:
                literal += part
            position += take
            offset += take
            if offset == end:
                found = hasher.digest() if hashed else bytes(literal)
                if found != expected:
                    what = f"object {expected.hex()}" if hashed else "header or trailer"
                    raise BadUpstream(f"the {what} in the source's pack {copy.name} does not check out (at offset {offset})")
                if offset == copy.size:
                    break
                end, expected, hashed = next(segments)
                hasher, literal = blake3(), bytearray()
        if offset - flushed >= WRITEBACK_STEP:
            start_writeback(fd, flushed, offset - flushed)  # a head start for the fsync
            flushed = offset
    if offset != copy.size:
        raise BadUpstream(f"the source sent {offset} of the {copy.size} bytes of pack {copy.name}")


def take_packs(pack_dir: Path, source) -> list[str]:
    """Take every pack the source lists and this store lacks, whole; the names of those taken.

    A pack that fails a check, or that a repack removed meanwhile, is left out (its
    objects are then fetched one by one, each checked): copying packs whole only saves time.
    So is a source that lists no packs (an imstore from before R13 answers 404).
    """
    try:
        listing = source.packs()
    except NotFound:
        return []
    taken = []
    for name, size in listing:
        if os.path.exists(pack_dir / f"{name}.idx"):
            continue  # a name is the digest of the entries: this store holds the same pack
        try:
            copy = check_index(name, size, b"".join(bytes(piece) for piece in source.pack_file(f"{name}.idx")))  # pieces may share a buffer
            receive_pack(pack_dir, copy, source.pack_file(f"{name}.pack"))
        except (BadUpstream, NotFound):
            continue
        taken.append(name)
    return taken


def pack_ids(pack_dir: Path, names: list[str]) -> tuple[set[str], int]:
    """The ids of the objects in the packs named, and their bytes (packs just taken: their indexes were checked)."""
    ids: set[str] = set()
    total = 0
    for name in names:
        try:
            data = (pack_dir / f"{name}.idx").read_bytes()
        except OSError as exc:
            raise from_os_error(exc, f"reading the index of pack {name}") from None
        for raw, _offset, length in ENTRY.iter_unpack(memoryview(data)[INDEX_HEADER.size : -DIGEST_SIZE]):
            ids.add(raw.hex())
            total += length
    return ids, total


class PackTaker:
    """take_packs, running beside the caller: in a child process, or a thread where forking is not safe.

    Why a process: the copy hashes every object (10,000 short calls for a 100 MB clone) while the
    caller decodes the frames and builds the index, both holding Python's GIL often. In two threads
    they queue for it (a clone took 0.31 s against 0.19 s with a fork, measured here); in two
    processes they use both cores. A fork is safe only while this process runs one thread (the
    CLI's clone and pull; a server's follower thread gets a thread). wait() gives the ids of the
    objects in the packs taken, or raises the copy's error; a copier killed by a signal takes this
    process with it (it was one command: whatever was durable stays, and `pull` finishes).
    """

    def __init__(self, pack_dir: Path, source):
        self.pack_dir = pack_dir
        self.done = False
        self.objects = self.bytes = 0  # what the packs taken hold (known once waited for)
        self._known: set[str] | None = None
        self._answer: dict = {}
        self._pid = self._fd = -1
        if threading.active_count() == 1 and hasattr(os, "fork"):
            self._fork(source)
        else:
            self._thread = threading.Thread(target=self._run, args=(source,), daemon=True, name="imstore-packs")
            self._thread.start()

    def _run(self, source) -> None:
        try:
            self._answer = {"packs": take_packs(self.pack_dir, source)}
        except ImstoreError as exc:
            self._answer = {"error": type(exc).__name__, "detail": str(exc)}
        except Exception as exc:  # noqa: BLE001 -- handed to the caller, who raises it
            self._answer = {"error": "ImstoreError", "detail": f"copying packs failed: {type(exc).__name__}: {exc}"}

    def _fork(self, source) -> None:
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: copy, say what was taken (or why not), and leave without running any cleanup
            try:
                os.close(read_fd)
                self._run(source)
                write_all(write_fd, json.dumps(self._answer).encode())
            finally:
                os._exit(0)
        os.close(write_fd)
        self._pid, self._fd = pid, read_fd

    def wait(self) -> set[str]:
        if not self.done:
            self.done = True
            if self._pid > 0:
                self._answer = self._reap()
            else:
                self._thread.join()
        error = self._answer.get("error")
        if error is not None:
            cls = getattr(errors, error, None)
            raise (cls if isinstance(cls, type) and issubclass(cls, ImstoreError) else ImstoreError)(self._answer.get("detail", ""))
        if self._known is None:
            self._known, self.bytes = pack_ids(self.pack_dir, self._answer.get("packs", []))
            self.objects = len(self._known)
        return self._known

    def _reap(self) -> dict:
        with os.fdopen(self._fd, "rb") as pipe:
            data = pipe.read()
        _pid, status = os.waitpid(self._pid, 0)
        if os.WIFSIGNALED(status):
            os.kill(os.getpid(), os.WTERMSIG(status))  # killed (kill -9, a crash test): so is this command
        try:
            return json.loads(data)
        except ValueError:
            return {"error": "ImstoreError", "detail": "the pack copier ended without an answer"}

    def close(self) -> None:
        """Stop a copy that is no longer wanted (the pull failed before it needed the packs)."""
        if not self.done and self._pid > 0:
            try:
                os.kill(self._pid, signal.SIGKILL)  # its temp files are removed by the next writer, as any
            except ProcessLookupError:
                pass
            os.close(self._fd)
            os.waitpid(self._pid, 0)
            self.done = True
        elif not self.done:
            self._thread.join()
            self.done = True
