"""S3 multipart uploads: parts are temporary files in STORE/s3-uploads/<upload id>/, not history.

Every worker process sees the same directory, so a part may arrive at any worker. The upload id is
32 random hex digits and is checked before it names a path. An aborted upload's directory is
removed and leaves no version.

    upload.json        {"bucket", "key", "content_type", "meta", "initiated"}
    object             the object being built: a part of the stride's size goes straight to its place
                       in it, (n-1)*stride, so that Complete copies nothing (S3-10)
    stride             the size of the first part of at least 5 MiB (aws-cli's, boto3's: all but the last)
    <n>.claim          made once (O_EXCL) by the one request that may write part n in place; once the
                       part is there it holds the part's record, and <n>.json is linked to it
    <n>-<md5>.part     part n when it is not in place (another size, the last part, a part sent again)
    <n>.json           {"etag", "size", "boot", "at"} of part n, written once its bytes are in place
                       ("at": its offset in `object`, absent for a .part file)
    completed.json     {"etag", "version"} once committed (the rest is then removed), so that a retried
                       Complete gets the same answer

Complete holds `object` exclusively (flock); a part written in place holds it shared and checks
that the name still is its file, so no byte is written into a file once it is an object. When the
parts are 1..N of the stride (but the last), the parts not in place are copied to their place,
`object` is cut to size, renamed out of the writers' way and becomes the object itself (hashed on
every core from where the worker's prefix hasher stopped, S3-28; fsynced, linked); otherwise the parts
are copied into a new object by the kernel.

Parts are not fsynced (S3-10): a part is temporary data, and Complete makes the object durable
before it answers. What a crash of the machine may cost is caught at Complete: a part written
before the last boot (the kernel's boot id) is read and its MD5 checked again, and a lost or
damaged one is InvalidPart, so the client uploads again and no acknowledged object is lost.
A worker's crash loses nothing: the bytes are in the page cache.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from ... import layout
from ...diskio import copy_span, start_writeback
from ...fsio import CHUNK_SIZE, atomic_write, fsync_dir, fsync_fd, write_all
from .prefixhash import HashedPrefix, PrefixHashes
from .xml import S3Error

__all__ = ["Uploads", "Upload", "Part", "Assembly", "MAX_PART_NUMBER", "MIN_PART_SIZE", "EXPIRY_ENV", "expiry_from_env"]

MAX_PART_NUMBER = 10_000
MIN_PART_SIZE = 5 << 20  # every part but the last (S3's rule)
_UPLOAD_ID = re.compile(r"^[0-9a-f]{32}$")
OBJECT, STORED = "object", "object.stored"
# Days an upload nothing touched is kept (serve --s3-upload-expiry, S3-11); set by serve for its workers with --s3-port.
EXPIRY_ENV = "IMSTORE_S3_UPLOAD_EXPIRY_DAYS"
_IN_PLACE_END = 1 << 40  # a part whose place would end past 1 TiB is written on its own (file size limits)


@dataclass(frozen=True)
class Part:
    number: int
    etag: str  # MD5 hex, unquoted
    size: int
    modified_ns: int
    boot: str = ""  # the kernel's boot id when it was written
    at: int | None = None  # its offset in `object`; None: in its own file
    checksums: tuple[tuple[str, str], ...] = ()  # (algorithm, base64) of each x-amz-checksum-* it was sent with

    @property
    def file_name(self) -> str:
        return f"{self.number}-{self.etag}.part"


@dataclass(frozen=True)
class Upload:
    upload_id: str
    bucket: str
    key: str
    content_type: str | None
    meta: dict
    initiated_ns: int
    checksum: tuple[str, str] | None = None  # (algorithm, COMPOSITE or FULL_OBJECT) the object's checksum is made of


class Assembly(NamedTuple):
    """What Complete stores: the spans (path, offset, length) of the object's bytes; adopt: the one span is a whole
    file to adopt as the object; the multipart ETag md5-of-md5s-N; the part sizes; untouched: how many bytes at the
    start of an adopted file are parts written in place (none was copied over them)."""

    spans: list[tuple[Path, int, int]]
    adopt: bool
    etag: str
    sizes: list[int]
    untouched: int = 0


def _boot_id() -> str | None:
    try:
        with open("/proc/sys/kernel/random/boot_id") as handle:
            return handle.read().strip() or None
    except OSError:
        return None  # then every part is fsynced, as no crash could be told apart


BOOT_ID = _boot_id()


def expiry_from_env() -> float | None:
    """Seconds an untouched upload is kept in this serve's workers, or None: never removed (or S3 is off)."""
    text = os.environ.get(EXPIRY_ENV)
    try:
        days = float(text) if text else 0.0
    except ValueError:
        return None
    return days * 86400 if days > 0 else None


def _still_named(fd: int, path: Path) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def _no_upload() -> S3Error:
    return S3Error(404, "NoSuchUpload", "The specified multipart upload does not exist.")


class Uploads:
    """The multipart uploads under one store."""

    def __init__(self, store_root: str | os.PathLike):
        self.root = Path(store_root) / layout.S3_UPLOADS
        self.prefixes = PrefixHashes()  # BLAKE3 of each upload's `object`, hashed from its start as parts land

    def _dir(self, upload_id: str) -> Path:
        if not _UPLOAD_ID.match(upload_id):
            raise _no_upload()
        return self.root / upload_id

    def create(self, bucket: str, key: str, content_type: str | None, meta: dict, checksum: tuple[str, str] | None = None) -> str:
        upload_id = secrets.token_hex(16)
        directory = self.root / upload_id
        directory.mkdir(parents=True, mode=0o700)
        record = {"bucket": bucket, "key": key, "content_type": content_type, "meta": meta, "initiated": time.time_ns(),
                  **({"checksum": list(checksum)} if checksum else {})}  # fmt: skip
        os.close(os.open(directory / OBJECT, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
        atomic_write(directory / "upload.json", json.dumps(record).encode(), 0o600)
        fsync_dir(self.root)
        return upload_id

    def get(self, upload_id: str, bucket: str, key: str | None = None) -> Upload:
        try:
            record = json.loads((self._dir(upload_id) / "upload.json").read_bytes())
        except (FileNotFoundError, NotADirectoryError):
            raise _no_upload() from None
        checksum = tuple(record["checksum"]) if record.get("checksum") else None
        upload = Upload(upload_id, record["bucket"], record["key"], record["content_type"], record["meta"], record["initiated"], checksum)
        if upload.bucket != bucket or (key is not None and upload.key != key):
            raise _no_upload()
        return upload

    def write_part(self, upload: Upload, number: int, chunks: Iterable[bytes], md5, declared: int | None = None,
                   checksums: Callable[[], dict] = dict) -> Part:  # fmt: skip
        """Store part `number` from chunks (already checked by the caller's digests, whose md5 is given); declared:
        its length, when the request says it before the body (Content-Length, x-amz-decoded-content-length);
        checksums: once the body is read, {algorithm: base64} of the x-amz-checksum-* it was checked against."""
        if not 1 <= number <= MAX_PART_NUMBER:
            raise S3Error(400, "InvalidArgument", f"Part number must be an integer between 1 and {MAX_PART_NUMBER}, inclusive")
        directory = self._dir(upload.upload_id)
        at = self._place(directory, number, declared)
        if at is not None:
            size = self._write_in_place(directory, at, declared, chunks)
            part = Part(number, md5.hexdigest(), size, time.time_ns(), BOOT_ID or "", at)
        else:
            part = self._write_alone(directory, number, chunks, md5)
        record = json.dumps({"etag": part.etag, "size": part.size, "boot": part.boot, **({"at": at} if at is not None else {}),
                             "checksums": checksums()}).encode()  # fmt: skip
        if at is not None:
            self._record_in_claim(directory, number, record)
            self.prefixes.landed(upload.upload_id, directory / OBJECT, number, declared)
        else:
            atomic_write(directory / f"{number}.json", record, 0o600, durable=BOOT_ID is None)
        return part

    @staticmethod
    def _record_in_claim(directory: Path, number: int, record: bytes) -> None:
        """Write an in-place part's record into its claim, then give that file the record's name: no new file per
        part beyond the claim (creating files costs here: ext4 searches its inode bitmaps past recent deletions)."""
        claim, named = directory / f"{number}.claim", directory / f"{number}.json"
        durable = BOOT_ID is None
        try:
            fd = os.open(claim, os.O_WRONLY | os.O_CLOEXEC)
            try:
                write_all(fd, record)
                if durable:
                    fsync_fd(fd)
            finally:
                os.close(fd)
            os.link(claim, named)  # readers see the record whole, or no record: it was written before the name
        except FileExistsError:  # part n sent on its own before: this later upload's record replaces that one
            atomic_write(named, record, 0o600, durable=durable)
            return
        except FileNotFoundError:
            raise _no_upload() from None  # aborted meanwhile
        if durable:
            fsync_dir(directory)

    def _place(self, directory: Path, number: int, declared: int | None) -> int | None:
        """The offset part `number` is written at in `object`, or None when it goes to a file of its own."""
        if declared is None or declared < MIN_PART_SIZE or number * declared > _IN_PLACE_END:
            return None
        try:
            try:
                stride = int((directory / "stride").read_bytes())
            except FileNotFoundError:  # the first part of the upload to get here sets it
                atomic_write(directory / "stride", str(declared).encode(), 0o600, create_only=True, durable=False)
                stride = int((directory / "stride").read_bytes())
            if stride != declared:
                return None
            os.close(os.open(directory / f"{number}.claim", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
        except FileExistsError:
            return None  # sent before (or being sent): this one goes to a file of its own, nothing is overwritten
        except (FileNotFoundError, ValueError):
            raise _no_upload() from None
        return (number - 1) * stride

    def _write_in_place(self, directory: Path, at: int, declared: int, chunks: Iterable[bytes]) -> int:
        try:
            fd = os.open(directory / OBJECT, os.O_WRONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise _no_upload() from None  # completed or aborted
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)  # Complete holds it exclusively
            if not _still_named(fd, directory / OBJECT):
                raise _no_upload()  # completed meanwhile: its file is an object now, never written again
            size = 0
            for chunk in chunks:
                if size + len(chunk) > declared:
                    raise S3Error(400, "IncompleteBody", "the body is longer than its declared length")
                view = memoryview(chunk)
                while view:
                    written = os.pwrite(fd, view, at + size)
                    view, size = view[written:], size + written
            if BOOT_ID is None:
                fsync_fd(fd)
            else:
                start_writeback(fd, at, size)  # the disk starts on it now, so Complete's fsync finds little left
            return size
        finally:
            os.close(fd)

    def _write_alone(self, directory: Path, number: int, chunks: Iterable[bytes], md5) -> Part:
        temp = directory / f".tmp-{number}-{os.getpid()}-{secrets.token_hex(4)}"
        size = 0
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileNotFoundError:
            raise _no_upload() from None  # aborted meanwhile
        try:
            try:
                for chunk in chunks:
                    write_all(fd, chunk)
                    size += len(chunk)
                if BOOT_ID is None:
                    fsync_fd(fd)
            finally:
                os.close(fd)
            part = Part(number, md5.hexdigest(), size, time.time_ns(), BOOT_ID or "")
            os.replace(temp, directory / part.file_name)  # named by its MD5: a part sent again never replaces it in use
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        return part

    def parts(self, upload: Upload) -> list[Part]:
        directory = self._dir(upload.upload_id)
        if (directory / "completed.json").exists():
            raise _no_upload()
        found = []
        for entry in os.scandir(directory):
            name, _, suffix = entry.name.partition(".")
            if suffix == "json" and name.isdigit():
                try:
                    record = json.loads(Path(entry.path).read_bytes())
                except (FileNotFoundError, ValueError):
                    continue  # being replaced right now
                found.append(Part(int(name), record["etag"], record["size"], entry.stat().st_mtime_ns, record.get("boot", ""),
                                  record.get("at"), tuple(sorted(record.get("checksums", {}).items()))))
        return sorted(found, key=lambda part: part.number)

    @contextmanager
    def exclusive(self, upload: Upload) -> Iterator[None]:
        """Hold the upload's `object` exclusively (Complete): no part is written in place meanwhile."""
        try:
            fd = os.open(self._dir(upload.upload_id) / OBJECT, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise _no_upload() from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def assemble(self, upload: Upload, wanted: list[tuple[int, str]]) -> Assembly:
        """After S3's checks, with `exclusive` held: what Complete stores (Assembly)."""
        if not wanted:
            raise S3Error(400, "MalformedXML", "a multipart upload is completed with at least one part")
        numbers = [number for number, _ in wanted]
        if numbers != sorted(set(numbers)):
            raise S3Error(400, "InvalidPartOrder", "The list of parts was not in ascending order.")
        stored = {part.number: part for part in self.parts(upload)}
        chosen = []
        for index, (number, etag) in enumerate(wanted):
            part = stored.get(number)
            if part is None or etag.strip('"') != part.etag:
                raise S3Error(400, "InvalidPart", f"part {number} was not uploaded, or its ETag does not match")
            if index < len(wanted) - 1 and part.size < MIN_PART_SIZE:
                raise S3Error(400, "EntityTooSmall", "Your proposed upload is smaller than the minimum allowed object size.")
            chosen.append(part)
        directory = self._dir(upload.upload_id)
        for part in chosen:
            self._check_part(directory, part)
        combined = hashlib.md5(b"".join(bytes.fromhex(part.etag) for part in chosen), usedforsecurity=False)
        etag, sizes = f"{combined.hexdigest()}-{len(chosen)}", [part.size for part in chosen]
        try:
            stride = int((directory / "stride").read_bytes())
        except (FileNotFoundError, ValueError):
            stride = None
        if stride is None or numbers != list(range(1, len(chosen) + 1)) or any(size != stride for size in sizes[:-1]):
            spans = [(directory / OBJECT, part.at, part.size) if part.at is not None else (directory / part.file_name, 0, part.size)
                     for part in chosen]  # fmt: skip
            return Assembly(spans, False, etag, sizes)
        copied = [part for part in chosen if part.at is None]
        untouched = min(sum(sizes), (copied[0].number - 1) * stride) if copied else sum(sizes)
        with open(directory / OBJECT, "r+b") as handle:  # every part in its place: copy those sent on their own
            for part in copied:
                with open(directory / part.file_name, "rb") as source:
                    handle.seek((part.number - 1) * stride)
                    copy_span(source.fileno(), 0, part.size, handle.fileno())
            handle.truncate(sum(sizes))  # parts past the last chosen one, if any, are not the object's
        os.replace(directory / OBJECT, directory / STORED)  # no writer opens it again: it becomes the object
        return Assembly([(directory / STORED, 0, sum(sizes))], True, etag, sizes, untouched)

    def hashed_prefix(self, upload: Upload, assembly: Assembly) -> HashedPrefix | None:
        """What this worker hashed of the upload's `object` while its parts arrived (S3-28), when the assembled object
        starts with exactly those bytes; None otherwise (adopt then hashes the whole file). It stops following the upload."""
        prefix = self.prefixes.take(upload.upload_id)
        if prefix is None or not assembly.adopt or prefix.length > assembly.untouched:
            return None
        return prefix

    @staticmethod
    def _check_part(directory: Path, part: Part) -> None:
        """The part's bytes are there in full; read and MD5-checked again if written before the last boot (not fsynced)."""
        lost = S3Error(400, "InvalidPart",
                       f"part {part.number} is no longer there in full (a restart, or a Complete that failed): upload it again")
        path, start = (directory / OBJECT, part.at) if part.at is not None else (directory / part.file_name, 0)
        try:
            if os.stat(path).st_size < start + part.size:
                raise lost
            if part.boot == (BOOT_ID or ""):  # written since the last boot (or fsynced, where boots cannot be told)
                return
            md5 = hashlib.md5(usedforsecurity=False)
            with open(path, "rb") as handle:
                handle.seek(start)
                left = part.size
                while left and (piece := handle.read(min(CHUNK_SIZE, left))):
                    md5.update(piece)
                    left -= len(piece)
        except FileNotFoundError:
            raise lost from None
        if md5.hexdigest() != part.etag:
            raise lost

    def completed(self, upload: Upload) -> tuple[str, int, list | None] | None:
        """(ETag, version, [checksum algorithm, value, type] or None) of an upload that was completed, or None."""
        try:
            record = json.loads((self._dir(upload.upload_id) / "completed.json").read_bytes())
        except FileNotFoundError:
            return None
        return record["etag"], record["version"], record.get("checksum")

    def finish(self, upload: Upload, etag: str, version: int, checksum: list | None = None) -> None:
        """Record the committed result, then drop the rest (a crash in between only leaves files to remove)."""
        directory = self._dir(upload.upload_id)
        record = {"etag": etag, "version": version, **({"checksum": checksum} if checksum else {})}
        atomic_write(directory / "completed.json", json.dumps(record).encode(), 0o600)
        self.prefixes.forget(upload.upload_id)
        for entry in os.scandir(directory):
            if entry.name not in ("upload.json", "completed.json"):
                Path(entry.path).unlink(missing_ok=True)

    def remove(self, upload_id: str) -> None:
        directory = self._dir(upload_id)
        if not directory.exists():
            raise _no_upload()
        self.prefixes.forget(upload_id)
        shutil.rmtree(directory, ignore_errors=True)

    def expire(self, max_age: float, now: float | None = None) -> int:
        """Remove every upload nothing touched for max_age seconds (S3's AbortIncompleteMultipartUpload, for all
        buckets): the newest change to its directory or any file in it is older. How many were removed."""
        now = time.time() if now is None else now
        removed = 0
        try:
            entries = [entry for entry in os.scandir(self.root) if _UPLOAD_ID.match(entry.name)]
        except FileNotFoundError:
            return 0
        for entry in entries:
            try:
                newest = max([entry.stat().st_mtime] + [inner.stat().st_mtime for inner in os.scandir(entry.path)])
            except FileNotFoundError:
                continue  # removed meanwhile
            if now - newest > max_age:
                self.prefixes.forget(entry.name)
                shutil.rmtree(entry.path, ignore_errors=True)
                removed += 1
        return removed

    def list(self, bucket: str) -> list[Upload]:
        found = []
        try:
            entries = list(os.scandir(self.root))
        except FileNotFoundError:
            return []
        for entry in entries:
            if _UPLOAD_ID.match(entry.name):
                try:
                    upload = self.get(entry.name, bucket)
                except S3Error:
                    continue
                if not (Path(entry.path) / "completed.json").exists():
                    found.append(upload)
        return sorted(found, key=lambda upload: (upload.key, upload.initiated_ns))
