"""Run every benchmark (what `make bench` does); --quick for smaller sizes and fewer runs.

Example: .venv/bin/python bench/run_all.py --quick
"""

from __future__ import annotations

import argparse
import platform
import sys
import time

import bench_put_large
import bench_scale
import bench_startup
from _common import load_note


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller files and stores, fewer runs (a few minutes less)")
    parser.add_argument("--no-git", action="store_true", help="skip git hash-object -w in the put benchmark")
    args = parser.parse_args(argv)
    quick = ["--quick"] if args.quick else []
    print(f"imstore benchmarks: Python {platform.python_version()}, {platform.platform()}, {load_note()}")
    started = time.perf_counter()
    bench_put_large.main(quick + (["--no-git"] if args.no_git else []))
    bench_startup.main(quick)
    bench_scale.main(quick)
    print(f"all benchmarks took {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
