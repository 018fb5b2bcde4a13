"""The body of a remote import (`imstore --remote URL import SOURCE`): one request, streamed.

The server imports one request body as one atomic batch, so the whole SOURCE
travels in one POST /v1/import body, produced here while it is sent, never
buffered whole and never in a temp file:

- a directory becomes an uncompressed tar written on the fly (PAX headers, so
  any name fits): the tree is walked by the same DirectorySource as a local
  import, so symlinks, special files and their warnings are the same
  (`--follow-symlinks` follows links inside SOURCE); a file's key is checked
  and the file opened before its header is sent, so a bad key or an unreadable
  file is skipped (`--skip-errors`) or fails the import with the local message;
- a tar file (any compression) or a tar on stdin is sent as it is;
- JSON lines are sent as they are, except that a line naming a client-side
  file with "path" is rewritten to "content_b64", the file base64-encoded as
  it is read (the server refuses "path": it never reads its own files for a
  client). A line that cannot be rewritten because its file cannot be read
  becomes a blank line when errors are skipped, so the server's line numbers
  stay those of the file.

Nothing here imports aiohttp: the client wraps these blocking chunk iterators.
"""

from __future__ import annotations

import base64
import json
import os
import stat
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from ..errors import InvalidInput, InvalidKey
from ..fsio import CHUNK_SIZE
from ..sources import JSONL_FIELDS, DirectorySource, ItemError, peek_stdin, source_kind
from ..validate import validate_key

__all__ = ["Upload", "plan_upload", "TAR_TYPE", "JSONL_TYPE"]

TAR_TYPE = "application/x-tar"
JSONL_TYPE = "application/x-ndjson"
BLOCK = 512
B64_CHUNK = 3 * (256 << 10)  # a multiple of 3: each piece encodes on its own


@dataclass
class Upload:
    """What to send: a fresh chunk iterator per attempt (skip collects the items left out by that attempt)."""

    content_type: str
    chunks: Callable[[str, bool, Callable[[str], None]], Iterator[bytes]]  # (prefix, skip_errors, skip)
    name: str | None = None  # how JSON lines are named in the server's messages ("data.jsonl line 3")
    size: int | None = None  # Content-Length, when known before sending
    total: int | None = None  # bytes of content, for a progress bar
    repeatable: bool = True  # can be sent again (a retry); stdin cannot


def plan_upload(source: str, stdin: BinaryIO | None, warn: Callable[[str], None], follow_symlinks: bool) -> Upload:
    """The Upload for SOURCE, refusing what a local import refuses with the same messages.

    warn gets the walk's warnings (a directory's symlinks and special files), once.
    """
    if source == "-":
        stream, kind = peek_stdin(stdin)
        if kind == "jsonl":
            cwd = os.getcwd()
            return Upload(JSONL_TYPE, lambda _p, skip_errors, skip: _jsonl(stream, cwd, "stdin", skip_errors, skip), "stdin",
                          repeatable=False)  # fmt: skip
        return Upload(TAR_TYPE, lambda *_: iter(lambda: stream.read(CHUNK_SIZE), b""), repeatable=False)
    kind = source_kind(source)
    if kind == "directory":
        walk = DirectorySource(source, warn, follow_symlinks)
        return Upload(TAR_TYPE, lambda prefix, skip_errors, skip: _directory_tar(walk, prefix, skip_errors, skip), total=walk.total_bytes)
    size = os.path.getsize(source)
    if kind == "jsonl":
        base, name = os.path.dirname(os.path.abspath(source)), os.path.basename(source)
        return Upload(JSONL_TYPE, lambda _p, skip_errors, skip: _jsonl_file(source, base, name, skip_errors, skip), name, total=size)
    return Upload(TAR_TYPE, lambda *_: _file_chunks(source), size=size, total=size)


def _file_chunks(path: str) -> Iterator[bytes]:
    try:
        handle = open(path, "rb", buffering=0)
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc.strerror}") from None
    with handle:
        while chunk := handle.read(CHUNK_SIZE):
            yield chunk


def _failed(error: ItemError, skip_errors: bool, skip: Callable[[str], None]) -> None:
    if not skip_errors:
        raise error
    skip(f"{error}; skipped")


# ============================================================ a directory as a tar stream
def _directory_tar(walk: DirectorySource, prefix: str, skip_errors: bool, skip) -> Iterator[bytes]:
    for entry in walk.entries:
        if isinstance(entry, ItemError):
            _failed(entry, skip_errors, skip)
            continue
        name, path, _stat = entry
        try:
            validate_key(prefix + name)
        except InvalidKey as exc:
            _failed(ItemError(f"{name}: {exc}"), skip_errors, skip)
            continue
        try:
            handle = open(path, "rb", buffering=0)
        except OSError as exc:
            _failed(ItemError(f"{name}: cannot read: {exc.strerror or exc}"), skip_errors, skip)
            continue
        with handle:
            yield from _member(handle, name)
    yield b"\0" * (2 * BLOCK)  # end of archive


def _member(handle, name: str) -> Iterator[bytes]:
    """One regular-file member: a PAX header, then the bytes as they are read, then padding."""
    status = os.fstat(handle.fileno())
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = status.st_size, int(status.st_mtime), 0o644
    yield info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
    left = status.st_size
    while left:
        try:
            chunk = handle.read(min(CHUNK_SIZE, left))
        except OSError as exc:
            raise ItemError(f"{name}: cannot read: {exc.strerror or exc}") from None
        if not chunk:
            raise ItemError(f"{name}: the file shrank while it was read; import again")
        left -= len(chunk)
        yield chunk
    if status.st_size % BLOCK:
        yield b"\0" * (BLOCK - status.st_size % BLOCK)


# ============================================================ JSON lines, "path" lines inlined
def _jsonl_file(path: str, base: str, name: str, skip_errors: bool, skip) -> Iterator[bytes]:
    try:
        handle = open(path, "rb")
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc.strerror}") from None
    with handle:
        yield from _jsonl(handle, base, name, skip_errors, skip)


def _jsonl(stream: BinaryIO, base: str, name: str, skip_errors: bool, skip) -> Iterator[bytes]:
    for number, line in enumerate(stream, 1):
        record = _path_record(line) if b'"path"' in line else None
        if record is None:
            yield line  # the server reads (and judges) it exactly as a local import would
            continue
        where = f"{name} line {number}"
        try:
            handle, relative = _open_path(record, base, where)
        except ItemError as exc:
            _failed(exc, skip_errors, skip)
            yield b"\n"  # keeps the line numbers of the server's messages
            continue
        with handle:
            yield from _inlined(record, handle, where, relative)


def _path_record(line: bytes) -> dict | None:
    """The line's object when it is a well-formed "path" line (the server judges every other line)."""
    try:
        record = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(record, dict) or set(record) - JSONL_FIELDS or not isinstance(record.get("key"), str):
        return None
    if sum(field in record for field in ("content", "content_b64", "path")) != 1 or not isinstance(record.get("path"), str):
        return None
    return record


def _open_path(record: dict, base: str, where: str):
    relative = record["path"]
    path = os.path.join(base, relative)
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise ItemError(f"{where}: {relative} is not a regular file")
    except OSError as exc:
        raise ItemError(f"{where}: cannot read {relative}: {exc.strerror or exc}") from None
    try:
        return open(path, "rb"), relative
    except OSError as exc:
        raise ItemError(f"{where}: cannot read: {exc.strerror or exc}") from None


def _inlined(record: dict, handle, where: str, relative: str) -> Iterator[bytes]:
    rest = {name: value for name, value in record.items() if name != "path"}
    head = json.dumps(rest)[:-1]  # ASCII only: any text the line held survives
    yield (head + (", " if rest else "") + '"content_b64": "').encode("ascii")
    while True:
        try:
            piece = handle.read(B64_CHUNK)
        except OSError as exc:
            raise ItemError(f"{where}: cannot read {relative}: {exc.strerror or exc}") from None
        if not piece:
            break
        yield base64.b64encode(piece)
    yield b'"}\n'
