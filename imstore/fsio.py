"""The few file-system calls whose order makes writes durable.

Every write path goes through here so a test can fail any one of them (F6) and a
crash can be injected between any two (F2). A failed fsync is never retried: the
page cache may already have dropped the dirty pages, so "retry until it works"
would report durability that does not exist.
"""

from __future__ import annotations

import os

__all__ = ["write_all", "fsync_fd", "fsync_dir", "crash_point", "CRASH_ENV"]

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
