"""A running `imstore get/cat --batch` process for the batch tests, local and remote: start it, read one
answer line within a deadline, and never leave it behind."""

from __future__ import annotations

import os
import select
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def running(command: list[str]) -> Iterator[subprocess.Popen]:
    """The process with pipes on stdin, stdout and stderr; killed and its pipes closed however the test ends."""
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for stream in (process.stdin, process.stdout, process.stderr):
            stream.close()


def read_line(process: subprocess.Popen, deadline: float) -> bytes:
    """One header line from a running batch, waiting at most until deadline (never blocks forever)."""
    line, fd = b"", process.stdout.fileno()
    while not line.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"no answer in time (so far {line!r})"
        if select.select([fd], [], [], remaining)[0]:
            byte = os.read(fd, 1)
            assert byte, "the batch ended early: " + process.stderr.read().decode()
            line += byte
    return line
