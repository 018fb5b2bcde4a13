"""S3 multipart uploads: parts are durable temporary files in STORE/s3-uploads/<upload id>/, not history.

Every worker process sees the same directory, so a part may arrive at any worker. Completing an
upload streams its parts, in order, into one put (verified and committed like any other) and then
removes the directory; an aborted upload's directory is removed and leaves no version. The
upload id is 32 random hex digits and is checked before it names a path.

    upload.json        {"bucket", "key", "content_type", "meta", "initiated"}
    <n>.part           the bytes of part n (1..10000), fsynced, then renamed into place
    <n>.json           {"etag", "size"} of part n, written once its bytes are in place
    completed.json     {"etag", "version"} once committed (the parts are then removed), so that a retried
                       Complete gets the same answer; Abort removes it with the directory
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ... import layout
from ...fsio import CHUNK_SIZE, atomic_write, fsync_dir, fsync_fd, write_all
from .xml import S3Error

__all__ = ["Uploads", "Upload", "Part", "MAX_PART_NUMBER", "MIN_PART_SIZE"]

MAX_PART_NUMBER = 10_000
MIN_PART_SIZE = 5 << 20  # every part but the last (S3's rule)
_UPLOAD_ID = re.compile(r"^[0-9a-f]{32}$")


@dataclass(frozen=True)
class Part:
    number: int
    etag: str  # MD5 hex, unquoted
    size: int
    modified_ns: int


@dataclass(frozen=True)
class Upload:
    upload_id: str
    bucket: str
    key: str
    content_type: str | None
    meta: dict
    initiated_ns: int


def _no_upload() -> S3Error:
    return S3Error(404, "NoSuchUpload", "The specified multipart upload does not exist.")


class Uploads:
    """The multipart uploads under one store."""

    def __init__(self, store_root: str | os.PathLike):
        self.root = Path(store_root) / layout.S3_UPLOADS

    def _dir(self, upload_id: str) -> Path:
        if not _UPLOAD_ID.match(upload_id):
            raise _no_upload()
        return self.root / upload_id

    def create(self, bucket: str, key: str, content_type: str | None, meta: dict) -> str:
        upload_id = secrets.token_hex(16)
        directory = self.root / upload_id
        directory.mkdir(parents=True, mode=0o700)
        record = {"bucket": bucket, "key": key, "content_type": content_type, "meta": meta, "initiated": time.time_ns()}
        atomic_write(directory / "upload.json", json.dumps(record).encode(), 0o600)
        fsync_dir(self.root)
        return upload_id

    def get(self, upload_id: str, bucket: str, key: str | None = None) -> Upload:
        try:
            record = json.loads((self._dir(upload_id) / "upload.json").read_bytes())
        except (FileNotFoundError, NotADirectoryError):
            raise _no_upload() from None
        upload = Upload(upload_id, record["bucket"], record["key"], record["content_type"], record["meta"], record["initiated"])
        if upload.bucket != bucket or (key is not None and upload.key != key):
            raise _no_upload()
        return upload

    def write_part(self, upload: Upload, number: int, chunks: Iterable[bytes], md5) -> Part:
        """Store part `number` from chunks (already checked by the caller's digests, whose md5 is given)."""
        if not 1 <= number <= MAX_PART_NUMBER:
            raise S3Error(400, "InvalidArgument", f"Part number must be an integer between 1 and {MAX_PART_NUMBER}, inclusive")
        directory = self._dir(upload.upload_id)
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
                fsync_fd(fd)
            finally:
                os.close(fd)
            os.replace(temp, directory / f"{number}.part")
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        part = Part(number, md5.hexdigest(), size, time.time_ns())
        atomic_write(directory / f"{number}.json", json.dumps({"etag": part.etag, "size": size}).encode(), 0o600)
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
                found.append(Part(int(name), record["etag"], record["size"], entry.stat().st_mtime_ns))
        return sorted(found, key=lambda part: part.number)

    def assemble(self, upload: Upload, wanted: list[tuple[int, str]]) -> tuple[Iterator[bytes], str, list[int]]:
        """(the chosen parts' bytes in order, the multipart ETag md5-of-md5s-N, the part sizes) after S3's checks."""
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
        combined = hashlib.md5(b"".join(bytes.fromhex(part.etag) for part in chosen), usedforsecurity=False)
        directory = self._dir(upload.upload_id)

        def chunks() -> Iterator[bytes]:
            for part in chosen:
                with open(directory / f"{part.number}.part", "rb") as handle:
                    while piece := handle.read(CHUNK_SIZE):
                        yield piece

        return chunks(), f"{combined.hexdigest()}-{len(chosen)}", [part.size for part in chosen]

    def completed(self, upload: Upload) -> tuple[str, int] | None:
        """(ETag, version) of an upload that was completed, or None."""
        try:
            record = json.loads((self._dir(upload.upload_id) / "completed.json").read_bytes())
        except FileNotFoundError:
            return None
        return record["etag"], record["version"]

    def finish(self, upload: Upload, etag: str, version: int) -> None:
        """Record the committed result, then drop the parts (a crash in between only leaves parts to remove)."""
        directory = self._dir(upload.upload_id)
        atomic_write(directory / "completed.json", json.dumps({"etag": etag, "version": version}).encode(), 0o600)
        for entry in os.scandir(directory):
            if entry.name.endswith((".part", ".json")) and entry.name[0].isdigit():
                Path(entry.path).unlink(missing_ok=True)

    def remove(self, upload_id: str) -> None:
        directory = self._dir(upload_id)
        if not directory.exists():
            raise _no_upload()
        shutil.rmtree(directory, ignore_errors=True)

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
