"""The few file-system calls whose order makes writes durable.

Every write path goes through here so a test can fail any one of them (F6) and a
crash can be injected between any two (F2). A failed fsync is never retried: the
page cache may already have dropped the dirty pages, so "retry until it works"
would report durability that does not exist.
"""

from __future__ import annotations

import os
import stat

from .errors import Unavailable, from_os_error

__all__ = ["write_all", "fsync_fd", "fsync_dir", "crash_point", "CRASH_ENV", "CHUNK_SIZE", "write_new_file", "atomic_write"]

CRASH_ENV = "IMSTORE_CRASH_AT"
_crash_at = os.environ.get(CRASH_ENV, "")


def write_all(fd: int, data: bytes | memoryview) -> None:
    """write() until all of data is written (a short write is not an error)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def fsync_fd(fd: int) -> None:
    os.fsync(fd)


def fsync_dir(path: str | os.PathLike) -> None:
    """fsync a directory so a rename or link inside it survives power loss."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def crash_point(step: str) -> None:
    """Die at once (as SIGKILL would) when IMSTORE_CRASH_AT names this step.

    Used by the F2 tests to crash between any two steps of the write order.
    """
    if _crash_at and _crash_at == step:
        os.kill(os.getpid(), 9)


# The unit of streaming I/O: objects are read, hashed and sent this many bytes at a time.
CHUNK_SIZE = 1 << 20


def write_new_file(path: str | os.PathLike, data: bytes, mode: int = 0o644, *, durable: bool = True) -> None:
    """Create path (it must not exist) holding data, fsynced unless durable is False."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)  # the umask must not widen or narrow what the caller asked for
        write_all(fd, data)
        if durable:
            fsync_fd(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, data: bytes, mode: int = 0o644, *, create_only: bool = False, durable: bool = True) -> bool:
    """Write a small file so that readers see the old contents or the new, never a part (dulwich's _GitFile).

    The bytes go to a temp name beside path (`.tmp-<name>-…`), are fsynced, and
    then take the name: renamed over it, or with create_only linked to it, which
    fails if path exists (the file is created once: returns False, path untouched).
    The directory is fsynced so the name survives power loss. durable=False skips
    both fsyncs, for disposable files (caches). Returns True when path was written.
    OSError comes through for the caller to name.
    """
    path = os.fspath(path)
    directory, name = os.path.split(path)
    temp = os.path.join(directory, f".tmp-{name}-{os.getpid()}-{os.urandom(4).hex()}")
    write_new_file(temp, data, mode, durable=durable)
    try:
        if create_only:
            try:
                os.link(temp, path)
            except FileExistsError:
                return False
        else:
            os.replace(temp, path)
    finally:
        if create_only or os.path.lexists(temp):
            _unlink_quietly(temp)
    if durable:
        fsync_dir(directory or ".")
    return True


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def require_directory(path: str | os.PathLike, what: str) -> None:
    """Unavailable unless path is a directory: a store never re-creates its own directories (missing = unavailable)."""
    try:
        is_directory = stat.S_ISDIR(os.stat(path).st_mode)
    except (FileNotFoundError, NotADirectoryError):  # gone, or a file stands where a parent directory was
        raise Unavailable(f"{what} is missing or not a directory: {path}") from None
    except OSError as exc:  # EIO and the like: unavailable too, with the system's word for it
        raise from_os_error(exc, f"checking {what} {path}") from None
    if not is_directory:
        raise Unavailable(f"{what} is missing or not a directory: {path}")
