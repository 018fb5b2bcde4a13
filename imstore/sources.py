"""Import sources: a directory, a tar, or JSON lines, each yielding SourceItems.

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
- for '-', a first byte '{' means JSON lines, anything else a tar stream.
"""

from __future__ import annotations

import base64
import bz2
import gzip
import io
import json
import lzma
import os
import stat
import tarfile
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

from .errors import BodyTooLarge, InvalidInput
from .fsio import CHUNK_SIZE
from .statcache import FileStat, file_stat
from .validate import validate_content_type, validate_message, validate_meta

__all__ = [
    "open_source", "peek_stdin", "source_kind", "stream_source", "Source", "DirectorySource", "TarSource", "JsonLinesSource", "SourceItem",
    "ItemError", "TAR_ERRORS", "regular_file_size",
]  # fmt: skip

# What a damaged or truncated (compressed) tar raises while it is read.
TAR_ERRORS = (tarfile.TarError, EOFError, OSError, ValueError, zlib.error, lzma.LZMAError)
JSONL_SUFFIXES = (".jsonl", ".ndjson")
JSONL_FIELDS = {"key", "content", "content_b64", "path", "content_type", "meta", "message"}


class ItemError(InvalidInput):
    """One source item cannot be imported: exit 2 like any bad input (aborts unless errors are skipped)."""


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
    """Members of a tar (any compression tarfile reads; a stream when it comes from stdin or a request).

    A file and a stream end alike (D8): a compressed stream is decompressed by the same readers
    tarfile gives a file (gzip.GzipFile, bz2.BZ2File, lzma.LZMAFile), not by tarfile's stream
    mode, which takes a compressed stream that breaks off for a shorter archive; and after the
    last member both are read to their very end, so a compressed stream cut short or failing its
    check (the gzip CRC and length) is an error, and nothing is imported.

    max_expanded bounds the bytes a stream expands to (the tar after decompression): past it,
    BodyTooLarge (S1: a small .tar.gz of zeros must not fill the disk).
    """

    def __init__(self, warn, *, path: str | None = None, stream: BinaryIO | None = None, max_expanded: int | None = None):
        super().__init__(warn)
        self.path, self.stream, self.max_expanded = path, stream, max_expanded

    def _open(self) -> tarfile.TarFile:
        if self.path:
            return tarfile.open(self.path, "r:*")
        assert self.stream is not None
        return tarfile.open(fileobj=_expanded(self.stream, self.max_expanded), mode="r|")

    def items(self) -> Iterator[SourceItem | ItemError]:
        linked: dict[str, SourceItem] = {}
        try:
            archive = self._open()
        except (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError) as exc:
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
                    elif member.islnk():
                        # The importer has hashed the earlier member by now (tar items are read in order).
                        earlier = linked.get(_member_key(member.linkname))
                        if earlier is None or earlier.known_hash is None:
                            self.warn(f"tar member {member.name}: a hard link to {member.linkname}, which was not imported; skipped")
                            continue
                        where = f"tar member {member.name}"
                        yield SourceItem(key=member_name, where=where, size=earlier.size, known_hash=earlier.known_hash)
                    elif member.issym():
                        self.warn(f"tar member {member.name}: a symlink; skipped")
                    else:
                        self.warn(f"tar member {member.name}: not a regular file; skipped")
                member_name = "its last member"
                _read_to_end(archive.fileobj)  # the compressed stream's end and checks, the padding
        except TAR_ERRORS as exc:
            raise InvalidInput(f"the tar archive is damaged after {member_name}: {exc or type(exc).__name__}") from None


# A compressed tar stream by its first bytes (what tarfile's "r|*" looks for), and the reader tarfile uses for a file.
_COMPRESSED = (
    (b"\x1f\x8b", lambda stream: gzip.GzipFile(fileobj=stream, mode="rb")),
    (b"BZh", lambda stream: bz2.BZ2File(stream, "rb")),
    (b"\xfd7zXZ\x00", lambda stream: lzma.LZMAFile(stream, "rb")),
)


def _expanded(stream: BinaryIO, limit: int | None):
    """A tar stream, decompressed if it is compressed, counted against limit."""
    head = stream.read(6)
    stream = io.BufferedReader(_PrefixedRaw(head, stream), CHUNK_SIZE)
    for magic, reader in _COMPRESSED:
        if head.startswith(magic):
            stream = reader(stream)
            break
    return _Counted(stream, limit)


class _Counted:
    """A reader that raises BodyTooLarge once more than limit bytes came through (None: no limit)."""

    def __init__(self, stream, limit: int | None):
        self.stream, self.limit, self.count = stream, limit, 0

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        self.count += len(data)
        if self.limit is not None and self.count > self.limit:
            raise BodyTooLarge(f"the import expands to more than {self.limit} bytes, this server's limit (--max-body)")
        return data


def _read_to_end(fileobj) -> None:
    """Read what follows the end-of-archive marker (bounded by the archive; limited like the rest)."""
    if fileobj is None:
        return
    while fileobj.read(CHUNK_SIZE):
        pass


def _member_key(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    return name


class JsonLinesSource(Source):
    """One JSON object per line (see the module docstring for the fields).

    base_dir None: "path" lines are refused (a server must never read its own files for a client).
    """

    def __init__(self, warn, stream: BinaryIO, base_dir: str | None, name: str):
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
            elif self.base_dir is None:
                raise ItemError(f"{where}: \"path\" names a file on the client, which the server cannot read (send \"content_b64\")")
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
        try:
            validate_content_type(content_type)
            validate_message(message)
            item.meta = validate_meta(meta)
        except InvalidInput as exc:
            raise ItemError(f"{where}: {exc}") from None
        item.content_type, item.message = content_type, message
        return item


class _PrefixedRaw(io.RawIOBase):
    """A raw stream that yields `first` and then the rest of `stream` (after sniffing stdin).

    It reads what the stream has (read1), never waiting for a whole buffer's worth: a body that
    is still arriving must reach the reader as it comes."""

    def __init__(self, first: bytes, stream: BinaryIO):
        self._first, self._stream = first, stream
        self._read = getattr(stream, "read1", None) or stream.read

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self._first:
            count = min(len(buffer), len(self._first))
            buffer[:count] = self._first[:count]
            self._first = self._first[count:]
            return count
        data = self._read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def stream_source(stream: BinaryIO, warn, *, kind: str | None = None, name: str = "stdin", base_dir: str | None = None,
                  max_expanded: int | None = None) -> Source:  # fmt: skip
    """The Source for a stream: kind "jsonl" or "tar", or None to sniff (a first byte '{' means JSON lines).

    name is how JSON lines are named in messages ("stdin line 3"); base_dir is where "path" lines are
    relative to (None: refused); max_expanded bounds a tar after decompression (see TarSource).
    """
    if kind is None:
        stream, kind = _sniff(stream, f"{name} is empty: send a tar or JSON lines")
    if kind == "jsonl":
        return JsonLinesSource(warn, stream, base_dir, name)
    return TarSource(warn, stream=stream, max_expanded=max_expanded)


def source_kind(source: str) -> str:
    """What SOURCE (not '-') is: "directory", "jsonl" or "tar"; a clear InvalidInput when it is none of them."""
    if os.path.isdir(source):
        return "directory"
    if not os.path.exists(source):
        raise InvalidInput(f"no such file or directory: {source}")
    if source.endswith(JSONL_SUFFIXES):
        return "jsonl"
    try:
        is_tar = os.path.isfile(source) and tarfile.is_tarfile(source)
    except OSError as exc:
        raise InvalidInput(f"cannot read {source}: {exc.strerror}") from None
    if not is_tar:
        raise InvalidInput(f"{source} is not a directory, a tar archive or a .jsonl/.ndjson file")
    return "tar"


def regular_file_size(source) -> int | None:
    """The bytes left to read in the regular file behind source; None for a pipe, a terminal or no file."""
    try:
        status = os.fstat(source.fileno())
    except (OSError, ValueError, AttributeError):
        return None
    if not stat.S_ISREG(status.st_mode):
        return None
    return status.st_size - source.tell()


def peek_stdin(stdin: BinaryIO | None) -> tuple[BinaryIO, str]:
    """stdin as a buffered stream that still holds its first byte, and what it is: "jsonl" or "tar"."""
    if stdin is None:
        raise InvalidInput("stdin is closed: pipe a tar or JSON lines in")
    return _sniff(stdin, "stdin is empty: pipe a tar or JSON lines in")


def _sniff(stream: BinaryIO, when_empty: str) -> tuple[BinaryIO, str]:
    """The stream, still holding its first byte, and what it holds: a first '{' means JSON lines, else a tar."""
    first = stream.read(1)
    if not first:
        raise InvalidInput(when_empty)
    return io.BufferedReader(_PrefixedRaw(first, stream), CHUNK_SIZE), "jsonl" if first == b"{" else "tar"


def open_source(source: str, stdin: BinaryIO | None, warn, follow_symlinks: bool) -> Source:
    """The Source for SOURCE: a directory, a .jsonl/.ndjson file, a tar, or '-' (a tar or JSONL stream)."""
    if source == "-":
        stream, kind = peek_stdin(stdin)
        return stream_source(stream, warn, kind=kind, name="stdin", base_dir=os.getcwd())
    kind = source_kind(source)
    if kind == "directory":
        return DirectorySource(source, warn, follow_symlinks)
    if kind == "jsonl":
        try:
            handle = open(source, "rb")
        except OSError as exc:
            raise InvalidInput(f"cannot read {source}: {exc.strerror}") from None
        return JsonLinesSource(warn, handle, os.path.dirname(os.path.abspath(source)), os.path.basename(source))
    return TarSource(warn, path=source)
