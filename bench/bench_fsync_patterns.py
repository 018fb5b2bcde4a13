"""How fast this disk makes small new files durable, by fsync pattern: the floor under durable PUTs.

Each round creates `--batch` new 4 KiB files spread over 256 shard directories (as loose
objects are) and makes them durable in one of three ways:

- sequential: fsync every file, then every changed directory, one after the other;
- parallel:   the same fsyncs from 8 threads at once (what ObjectStore.write_many does);
- one file:   one fsync for the batch and one for its directory (what a pack per batch would cost).

The result is new files per second. Compare it with bench_serve.py's durable PUTs/s:
a loose object needs its file and its directory fsynced, so the parallel figure bounds
the server's durable PUT rate before any of imstore's own work.

Example: .venv/bin/python bench/bench_fsync_patterns.py --batch 16 --rounds 40
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _common import load_note

from imstore.fsio import fsync_dir


def one_round(root: Path, pattern: str, batch: int, pool: ThreadPoolExecutor, data: bytes) -> None:
    fds, directories = [], set()
    for _ in range(batch):
        shard = root / os.urandom(1).hex()
        fd = os.open(shard / os.urandom(8).hex(), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
        os.write(fd, data)
        fds.append(fd)
        directories.add(str(shard))
    try:
        if pattern == "sequential":
            for fd in fds:
                os.fsync(fd)
            for directory in directories:
                fsync_dir(directory)
        elif pattern == "parallel":
            list(pool.map(os.fsync, fds))
            list(pool.map(fsync_dir, directories))
        else:  # one file: the batch's bytes in one file, one fsync, and its directory
            os.fsync(fds[0])
            fsync_dir(next(iter(directories)))
    finally:
        for fd in fds:
            os.close(fd)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=16, help="files per round")
    parser.add_argument("--rounds", type=int, default=40, help="rounds per pattern and repeat")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats (the median is reported)")
    parser.add_argument("--dir", help="where to write [default: a temp dir under /tmp]")
    args = parser.parse_args(argv)
    print(load_note())
    root = Path(tempfile.mkdtemp(prefix="imstore-bench-fsync-", dir=args.dir))
    data = os.urandom(4096)
    patterns = ("sequential", "parallel", "one file")
    rates: dict[str, list[float]] = {pattern: [] for pattern in patterns}
    try:
        for shard in range(256):
            (root / f"{shard:02x}").mkdir()
        with ThreadPoolExecutor(8) as pool:
            for _ in range(args.repeats):
                for pattern in patterns:
                    started = time.perf_counter()
                    for _ in range(args.rounds):
                        one_round(root, pattern, args.batch, pool, data)
                    rates[pattern].append(args.batch * args.rounds / (time.perf_counter() - started))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"== new 4 KiB files made durable, {args.batch} per round, {args.rounds} rounds, {args.repeats} repeats (median)")
    for pattern in patterns:
        print(f"  {pattern:<11} {statistics.median(rates[pattern]):8.0f} files/s   runs: {', '.join(f'{v:.0f}' for v in rates[pattern])}")
    ratio = statistics.median(rates["parallel"]) / statistics.median(rates["sequential"])
    print(f"  parallel / sequential = {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
