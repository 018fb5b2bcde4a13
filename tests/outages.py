"""F11 outages as a root-run test can make them (chmod does not stop root): the store
directory renamed away, it or objects/ or log/ replaced by a file, or a fault layer
that makes every file call under the store fail with EIO (this process only).
Shared by the local tests (tests/reliability) and the through-the-server ones (tests/server).
"""

from __future__ import annotations

import builtins
import errno
import io
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

OUTAGES = ["store-renamed", "store-replaced-by-file", "objects-replaced-by-file", "log-gone", "log-replaced-by-file", "eio"]


@contextmanager
def eio_under(root: Path) -> Iterator[None]:
    """Every open/stat/listdir of a path under root raises EIO, as a failing disk or NFS does."""
    prefix = str(root)
    real = {"open": builtins.open, "os_open": os.open, "stat": os.stat, "listdir": os.listdir, "scandir": os.scandir}

    def failing(name):
        original = real[name]

        def call(path, *args, **kwargs):
            if isinstance(path, (str, os.PathLike)) and os.fspath(path).startswith(prefix):
                raise OSError(errno.EIO, os.strerror(errno.EIO), os.fspath(path))
            return original(path, *args, **kwargs)

        return call

    patched = [(builtins, "open", failing("open")), (io, "open", failing("open")), (os, "open", failing("os_open"))]
    patched += [(os, "stat", failing("stat")), (os, "listdir", failing("listdir")), (os, "scandir", failing("scandir"))]
    saved = [(module, name, getattr(module, name)) for module, name, _ in patched]
    for module, name, replacement in patched:
        setattr(module, name, replacement)
    try:
        yield
    finally:
        for module, name, original in saved:
            setattr(module, name, original)


@contextmanager
def outage(kind: str, store_path: Path) -> Iterator[None]:
    """Make the store unavailable in one of the F11 ways, and bring it back afterwards."""
    aside = store_path.parent / f"{store_path.name}.aside"
    if kind == "eio":
        with eio_under(store_path):
            yield
        return
    moved = {
        "store-renamed": store_path,
        "store-replaced-by-file": store_path,
        "objects-replaced-by-file": store_path / "objects",
        "log-gone": store_path / "log",
        "log-replaced-by-file": store_path / "log",
    }[kind]
    os.rename(moved, aside)
    if kind.endswith("replaced-by-file"):
        moved.write_bytes(b"not a directory")
    try:
        yield
    finally:
        if moved.is_file():
            moved.unlink()
        os.rename(aside, moved)
