"""Shared helpers for the benchmarks: timing real processes, interleaved rounds, medians, reports.

Every benchmark times an anchor (cp + sync, git, `import typer`, a small store) in
the same run as imstore, interleaving the two so machine load hits both alike, and
reports medians and the ratio against the goal.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parent.parent


def imstore_command() -> list[str]:
    """The installed console script (what a user runs), or `python -m imstore` without one."""
    script = BIN / "imstore"
    return [str(script)] if script.exists() else [sys.executable, "-m", "imstore"]


def compile_package() -> None:
    """Byte-compile imstore, as `make install` does: this environment sets PYTHONDONTWRITEBYTECODE=1, so a
    module changed since the install would be compiled from source by every process a benchmark times."""
    import imstore

    package = Path(imstore.__file__).resolve().parent
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(package)], check=True, stdout=subprocess.DEVNULL)


def release_cached(directory: str | os.PathLike) -> None:
    """Write out and drop from the page cache every file under `directory` (earlier rounds' stored bytes).

    This VM hands memory the guest frees back to the host, and the first write to a page the guest has not
    used lately costs ~2.5 s of system CPU per GiB (writing 1 GiB into the page cache measured 0.19 s into
    recently freed pages, 2.7 s into others). A benchmark that writes a GiB per round would keep taking
    fresh pages and time the hypervisor. Dropping the previous rounds' pages just before a timed command
    leaves recently freed pages for the next writes, for whichever side runs next alike.
    """
    os.sync()
    for folder, _dirs, files in os.walk(directory):
        for name in files:
            try:
                fd = os.open(os.path.join(folder, name), os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                continue  # gone meanwhile, or a socket
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def timed(
    command: Sequence[str], *, env: dict | None = None, cwd: str | os.PathLike | None = None, cpu: list[float] | None = None
) -> float:
    """Wall-clock seconds of one process, from spawn to exit; a failing command is an error.

    With cpu, the process's user + system CPU seconds are appended to it: a figure
    that other load on the machine disturbs much less than wall-clock time.
    """
    start = time.perf_counter()
    process = subprocess.Popen(list(command), env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stderr = process.stderr.read()
    _pid, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    process.stderr.close()
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {process.returncode}: {stderr.decode(errors='replace').strip()}")
    if cpu is not None:
        cpu.append(usage.ru_utime + usage.ru_stime)
    return elapsed


def interleaved(
    cases: dict[str, Callable[[], float]], rounds: int, *, prepare: Callable[[str], None] | None = None
) -> dict[str, list[float]]:
    """Run every case once per round, rotating the order each round; return the times per case.

    prepare(name), untimed, runs before each timed case (e.g. remove the last copy, flush).
    """
    names = list(cases)
    times: dict[str, list[float]] = {name: [] for name in names}
    for number in range(rounds):
        shift = number % len(names)
        for name in names[shift:] + names[:shift]:
            if prepare is not None:
                prepare(name)
            times[name].append(cases[name]())
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)


def load_note() -> str:
    """One line saying how busy the machine was, since the figures depend on it."""
    one, five, _ = os.getloadavg()
    return f"machine: {os.cpu_count()} CPUs, load average {one:.2f} (1 min) {five:.2f} (5 min)"


def print_times(title: str, times: dict[str, list[float]], unit: str = "s") -> None:
    scale = 1000.0 if unit == "ms" else 1.0
    print(f"== {title}")
    for name, values in times.items():
        runs = " ".join(f"{value * scale:.1f}" if unit == "ms" else f"{value:.2f}" for value in values)
        digits = 1 if unit == "ms" else 3
        print(f"  {name:<40} median {median(values) * scale:8.{digits}f} {unit}  min {min(values) * scale:8.{digits}f}   runs: {runs}")


def print_ratio(label: str, ratio: float, goal: str, met: bool) -> None:
    print(f"  {label:<40} {ratio:8.2f}x   goal {goal}: {'met' if met else 'MISSED'}")


def write_random_file(path: Path, size: int) -> None:
    """size bytes of random data (incompressible, so no tool gets a free ride)."""
    block = 1 << 20
    with open(path, "wb") as handle:
        remaining = size
        while remaining > 0:
            handle.write(os.urandom(min(block, remaining)))
            remaining -= block


def read_through(path: Path) -> None:
    """Read a file once so that it sits in the page cache (warm for every contender)."""
    with open(path, "rb", buffering=0) as handle:
        while handle.read(8 << 20):
            pass
