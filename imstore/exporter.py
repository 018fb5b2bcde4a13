"""Export live keys (latest, or as of a time) to a directory or a tar.

Keys are arbitrary strings and are never trusted as paths. A key is exported only
when it is a plain relative path: no leading '/', no empty, '.' or '..' segment,
no NUL. Other keys (for instance tar members named '../x' or '/abs/x' that an
import kept as keys) are skipped with a warning naming them. Directory export
walks DEST with directory file descriptors and O_NOFOLLOW, so a symlink already
inside DEST cannot lead a write outside it either; each file is written to a temp
name and renamed only after its bytes hashed right.
"""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import BinaryIO

from .errors import InvalidInput, from_os_error
from .fsio import write_all
from .store import Store, Version
from .transfer import SMALL_OBJECT

__all__ = ["export", "ExportSummary", "unsafe_path_reason", "TAR_SUFFIXES"]

TAR_SUFFIXES = {".tar": "w", ".tar.gz": "w:gz", ".tgz": "w:gz", ".tar.bz2": "w:bz2", ".tar.xz": "w:xz"}


@dataclass
class ExportSummary:
    exported: int = 0
    skipped: int = 0
    bytes: int = 0
    warnings: list[str] = field(default_factory=list)
    versions: list[Version] = field(default_factory=list)  # what was exported (export --proofs proves these)

    def to_json(self) -> dict:
        return {"exported": self.exported, "skipped": self.skipped, "bytes": self.bytes, "warnings": self.warnings}


def unsafe_path_reason(key: str) -> str | None:
    """Why key cannot be a path inside DEST, or None when it can."""
    if "\x00" in key:
        return "it holds a NUL"
    if key.startswith("/"):
        return "it is an absolute path"
    for segment in key.split("/"):
        if segment == "":
            return "it has an empty path segment"
        if segment in (".", ".."):
            return f"it has a '{segment}' path segment"
    return None


def tar_mode(dest: str) -> str | None:
    """The tarfile write mode for DEST's name, or None when DEST is a directory."""
    for suffix, mode in TAR_SUFFIXES.items():
        if dest.endswith(suffix):
            return mode
    return None


def export(
    store: Store,
    dest: str,
    *,
    prefix: str = "",
    at: int | None = None,
    stdout: BinaryIO | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ExportSummary:
    """Write each live key under prefix to dest: a directory, a tar by suffix, or '-' (a tar on stdout)."""
    summary = ExportSummary()
    versions = []
    for version in store.live_versions(prefix, at):
        reason = unsafe_path_reason(version.key)
        if reason:
            summary.warnings.append(f"key {version.key!r} not exported: {reason}")
            summary.skipped += 1
        else:
            versions.append(version)
    if dest == "-":
        if stdout is None:
            raise InvalidInput("no stdout to write the tar to")
        _write_tar(store, versions, tarfile.open(fileobj=stdout, mode="w|"), summary, progress)
    elif (mode := tar_mode(dest)) is not None:
        _export_tar_file(store, versions, dest, mode, summary, progress)
    else:
        _export_directory(store, versions, dest, summary, progress)
    return summary


def _export_tar_file(store: Store, versions: list[Version], dest: str, mode: str, summary: ExportSummary, progress) -> None:
    temp = f"{dest}.imstore-{os.getpid()}.tmp"
    try:
        archive = tarfile.open(temp, mode)
    except OSError as exc:
        raise from_os_error(exc, f"cannot write {dest}") from None
    try:
        _write_tar(store, versions, archive, summary, progress)
        os.replace(temp, dest)
    except BaseException:
        try:
            os.unlink(temp)
        except OSError:
            pass
        raise


def _write_tar(store: Store, versions: list[Version], archive: tarfile.TarFile, summary: ExportSummary, progress) -> None:
    """Append each version as a member; every object is verified before its bytes go out."""
    with archive:
        for number, version in enumerate(versions, 1):
            reader = store.open_stored(version, through_cache=False)
            info = tarfile.TarInfo(version.key)
            info.size, info.mtime, info.mode = reader.size, version.time_ns // 1_000_000_000, 0o644
            if reader.size <= SMALL_OBJECT:
                archive.addfile(info, io.BytesIO(reader.read()))
            else:
                reader.verify()  # a tar cannot take bytes back: check first, then stream (checked again)
                archive.addfile(info, _ChunkFile(reader.chunks()))
            summary.exported += 1
            summary.versions.append(version)
            summary.bytes += reader.size
            if progress:
                progress(number, len(versions))


class _ChunkFile(io.RawIOBase):
    """A file-like view of an iterator of chunks (tarfile reads members through .read)."""

    def __init__(self, chunks):
        self._chunks, self._rest = chunks, b""

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self._rest) < size:
            chunk = next(self._chunks, None)
            if chunk is None:
                break
            self._rest += chunk
        if size < 0:
            size = len(self._rest)
        data, self._rest = self._rest[:size], self._rest[size:]
        return data


def _export_directory(store: Store, versions: list[Version], dest: str, summary: ExportSummary, progress) -> None:
    try:
        os.makedirs(dest, exist_ok=True)
        root_fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise from_os_error(exc, f"cannot create the directory {dest}") from None
    try:
        for number, version in enumerate(versions, 1):
            problem = _export_file(store, version, root_fd)
            if problem:
                summary.warnings.append(f"key {version.key!r} not exported: {problem}")
                summary.skipped += 1
            else:
                summary.exported += 1
                summary.versions.append(version)
                summary.bytes += version.size
            if progress:
                progress(number, len(versions))
    finally:
        os.close(root_fd)


def _export_file(store: Store, version: Version, root_fd: int) -> str | None:
    """Write one key below root_fd; a path problem is returned (a warning), a bad object raises."""
    *parents, name = version.key.split("/")
    fds: list[int] = []
    try:
        parent_fd = root_fd
        for segment in parents:
            try:
                os.mkdir(segment, 0o755, dir_fd=parent_fd)
            except FileExistsError:
                pass
            # O_NOFOLLOW: a symlink (or a file) where a directory is wanted is refused, never followed.
            parent_fd = os.open(segment, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent_fd)
            fds.append(parent_fd)
        _write_object(store, version, name, parent_fd)
    except OSError as exc:
        return f"cannot write it ({exc.strerror or exc}; another key may be a file where this one needs a directory)"
    finally:
        for fd in fds:
            os.close(fd)
    return None


def _write_object(store: Store, version: Version, name: str, dir_fd: int) -> None:
    temp = f".imstore-export-{os.getpid()}-{os.urandom(4).hex()}.tmp"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=dir_fd)
    try:
        try:
            for chunk in store.open_stored(version, through_cache=False).chunks():
                write_all(fd, chunk)
        finally:
            os.close(fd)
        moment = version.time_ns
        os.utime(temp, ns=(moment, moment), dir_fd=dir_fd, follow_symlinks=False)  # mtime = when the version was written
        os.replace(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)  # replaces a symlink itself, never its target
    except BaseException:
        try:
            os.unlink(temp, dir_fd=dir_fd)
        except OSError:
            pass
        raise
