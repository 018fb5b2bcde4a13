"""Benchmark `imstore clone` against `rsync -a SRC/ DEST/ && sync`, measured in the same run.

    python bench/bench_clone.py [--objects 10000] [--size-kib 10] [--rounds 3]

A store of --objects objects averaging --size-kib KiB (10,000 x 10 KiB: ~100 MB,
made by one `imstore import`) is copied three ways, interleaved, medians reported:
- `imstore clone URL DEST` from an `imstore serve` of it (a read token), goal <= 1.5x rsync;
- `imstore clone SRC DEST`, path to path (the backup-to-a-second-disk case);
- the anchor: `rsync -a SRC/ DEST/ && sync`.
clone checks every frame and hashes every object before it keeps it, and fsyncs
them; rsync checks nothing (the `sync` makes it durable, to compare like with like).
The import makes one pack, which a clone takes whole (R13, docs/DESIGN.md 15.3):
the time left is Python's start (~0.09 s), one decode of the 10,000 records and
the index and Merkle rows built from them (~0.17 s), the pack copy running beside
them in a child process.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import compile_package

IMSTORE = [sys.executable, "-m", "imstore"]


def run(args: list[str], env: dict | None = None) -> None:
    result = subprocess.run(args, env={**os.environ, **(env or {})}, capture_output=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, args))} failed ({result.returncode}): {result.stderr.decode()[-800:]}")


def timed(args: list[str], env: dict | None = None) -> float:
    start = time.perf_counter()
    run(args, env)
    return time.perf_counter() - start


def make_source(root: Path, objects: int, size_kib: int) -> int:
    """A store holding `objects` random objects of 1/2 to 3/2 x size_kib KiB (one import: one pack)."""
    rng = random.Random(12)
    tree = root / "tree"
    total = 0
    for number in range(objects):
        directory = tree / f"d{number % 100:02d}"
        directory.mkdir(parents=True, exist_ok=True)
        size = rng.randint(size_kib * 512, size_kib * 1536)
        (directory / f"f{number:05d}").write_bytes(rng.randbytes(size))
        total += size
    run([*IMSTORE, "init", str(root / "src")])
    run([*IMSTORE, "--store", str(root / "src"), "--no-cache", "import", str(tree)])
    shutil.rmtree(tree)
    return total


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_serve(store: Path, port: int, log: Path) -> subprocess.Popen:
    process = subprocess.Popen([*IMSTORE, "--store", str(store), "--no-cache", "serve", "--port", str(port), "--workers", "2"],
                               stdout=open(log, "wb"), stderr=subprocess.STDOUT)  # fmt: skip
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return process
        except OSError:
            if process.poll() is not None:
                raise SystemExit(f"serve exited: {log.read_text()[-800:]}") from None
            time.sleep(0.05)
    process.kill()
    raise SystemExit("serve did not start within 30 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=10_000)
    parser.add_argument("--size-kib", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    options = parser.parse_args()
    rsync = shutil.which("rsync")
    if rsync is None:
        raise SystemExit("rsync is not installed (apt-get install -y rsync): it is the anchor of this benchmark")
    compile_package()  # clone processes load imstore from bytecode, as after an install
    with tempfile.TemporaryDirectory(prefix="bench-clone-", dir=os.environ.get("BENCH_TMP")) as temp:
        root = Path(temp)
        total = make_source(root, options.objects, options.size_kib)
        source = root / "src"
        token = subprocess.run([*IMSTORE, "--store", str(source), "token", "create", "--scope", "replicate", "--name", "bench"],
                               capture_output=True, text=True, check=True).stdout.strip().split()[-1]  # fmt: skip
        port = free_port()
        serve = start_serve(source, port, root / "serve.log")
        times: dict[str, list[float]] = {"clone URL": [], "clone path": [], "rsync + sync": []}
        commands = {
            "clone URL": lambda dest: timed([*IMSTORE, "--no-cache", "clone", f"http://127.0.0.1:{port}", str(dest)],
                                            env={"IMSTORE_TOKEN": token}),  # fmt: skip
            "clone path": lambda dest: timed([*IMSTORE, "--no-cache", "clone", str(source), str(dest)]),
            "rsync + sync": lambda dest: timed(["sh", "-c", f'{rsync} -a "$0"/ "$1"/ && sync', str(source), str(dest)]),
        }
        try:
            for round_number in range(options.rounds):
                names = list(commands)
                names = names[round_number % 3 :] + names[: round_number % 3]  # rotate: a shared machine drifts
                for name in names:
                    destination = root / f"dest-{round_number}-{name.replace(' ', '-').replace('+', 'and')}"
                    run(["sync"])
                    times[name].append(commands[name](destination))
                    shutil.rmtree(destination)
        finally:
            serve.send_signal(signal.SIGTERM)
            serve.wait(30)
    median = {name: statistics.median(values) for name, values in times.items()}
    print(f"store: {options.objects} objects, {total / 1e6:.1f} MB; {options.rounds} rounds, medians")
    for name, seconds in median.items():
        print(f"  {name:14s} {seconds:8.3f} s   {total / seconds / 1e6:8.1f} MB/s")
    anchor = median["rsync + sync"]
    print(f"imstore clone URL / (rsync + sync) = {median['clone URL'] / anchor:.2f}x (goal <= 1.5x)")
    print(f"imstore clone path / (rsync + sync) = {median['clone path'] / anchor:.2f}x")


if __name__ == "__main__":
    main()
