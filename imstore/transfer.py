"""Copy a verified object to a file or a stream without ever emitting wrong bytes."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from .errors import InvalidInput, from_os_error
from .fsio import CHUNK_SIZE, fsync_fd, write_all
from .objects import ObjectReader

__all__ = ["copy_to_stream", "copy_to_file", "read_chunks", "SmallObjectKeeper", "SMALL_OBJECT"]

# Objects up to this size are read whole, checked, then written: one pass.
SMALL_OBJECT = 8 << 20


def copy_to_stream(reader: ObjectReader, stream: BinaryIO) -> int:
    """Write the object to stream (stdout). Nothing is written unless it hashes right.

    A stream cannot be taken back, so a large object is checked in a first pass
    and then streamed (the second pass comes from the page cache and is checked again).
    """
    if reader.size <= SMALL_OBJECT:
        data = reader.read()
        stream.write(data)
        stream.flush()
        return len(data)
    reader.verify()
    written = 0
    for chunk in reader.chunks():
        stream.write(chunk)
        written += len(chunk)
    stream.flush()
    return written


def copy_to_file(reader: ObjectReader, path: Path, *, durable: bool = False) -> int:
    """Write the object to path via a temp file that is renamed only once it hashed right."""
    path = Path(path)
    try:
        existing = os.stat(path).st_mode
    except OSError:
        existing = None
    if existing is not None and not stat.S_ISREG(existing) and not stat.S_ISDIR(existing):
        # A FIFO or device (/dev/stdout, /dev/full) is written into, never replaced by a file.
        try:
            with open(path, "wb") as target:
                return copy_to_stream(reader, target)
        except OSError as exc:
            raise from_os_error(exc, f"cannot write {path}") from None
    temp = path.with_name(f".{path.name}.imstore-{os.getpid()}.tmp")
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise from_os_error(exc, f"cannot write {path}") from None
    written = 0
    try:
        try:
            for chunk in reader.chunks():
                write_all(fd, chunk)
                written += len(chunk)
            if durable:
                fsync_fd(fd)
        finally:
            os.close(fd)
        os.replace(temp, path)
    except OSError as exc:
        _remove(temp)
        raise from_os_error(exc, f"cannot write {path}") from None
    except BaseException:
        _remove(temp)
        raise
    return written


def _remove(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


class SmallObjectKeeper:
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


def read_chunks(source: BinaryIO) -> Iterator[bytes]:
    read = getattr(source, "read1", None) or source.read
    while True:
        try:
            chunk = read(CHUNK_SIZE)
        except OSError as exc:
            raise InvalidInput(f"cannot read the input: {exc.strerror or exc}") from None
        if not chunk:
            return
        yield chunk
