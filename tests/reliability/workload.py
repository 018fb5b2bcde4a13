"""Shared by the fault tests and their writer subprocesses: deterministic contents and process helpers."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

WRITER = Path(__file__).with_name("writer.py")


def content_for(tag: str, number: int) -> bytes:
    """Unique, reproducible bytes for write `number` of writer `tag` (0 B to 96 KiB)."""
    rng = random.Random(f"{tag}/{number}")
    size = rng.choice([0, 1, 100, 4096, 20_000, 98_304])
    return f"{tag}/{number}/".encode() + rng.randbytes(size)


def key_for(tag: str, number: int) -> str:
    return f"key{number % 5}"


def start_writer(*args: str, env: dict | None = None) -> subprocess.Popen:
    """Start writer.py with args; its stdout is a pipe of text lines."""
    return subprocess.Popen(
        [sys.executable, str(WRITER), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )


def read_line(process: subprocess.Popen, expected: str) -> str:
    """The next stdout line, which must start with expected (a hang is caught by the test's timeout)."""
    # Byte by byte from the raw fd: a buffered readline could swallow later lines that
    # communicate() (which reads the fd directly) would then never see.
    raw = bytearray()
    for _ in range(4096):  # a line is short; the test's timeout catches a silent process
        byte = os.read(process.stdout.fileno(), 1)
        raw += byte
        if not byte or byte == b"\n":
            break
    line = raw.decode()
    assert line.startswith(expected), f"expected {expected!r}, got {line!r}; stderr: {process.stderr.read().decode()[-2000:]}"
    return line


def acks(output: bytes) -> list[tuple[str, int, str, int]]:
    """(key, version, hash, number) of every complete ACK line."""
    found = []
    for line in output.decode().split("\n")[:-1]:  # a last line without '\n' was cut by the kill
        if line.startswith("ACK "):
            _, key, version, object_hash, number = line.split(" ")
            found.append((key, int(version), object_hash, int(number)))
    return found
