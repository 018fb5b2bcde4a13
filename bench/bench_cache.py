"""Benchmark the read cache (issue 4): hot gets with and without it, on a normal and a slow store.

1. 20,000 gets of hot 4 KiB objects by key and version through the library API in
   one process: cache on vs off (--no-cache). Goal <= 1.0x, target <= 0.7x.
   Also with the in-process memo turned off, to show what diskcache itself costs.
2. The same with every open() and stat() of a store file delayed by 1 ms (a fault
   layer standing in for a slow NAS): cache on vs off. Goal <= 0.2x.
   And, when bindfs (Debian package) can mount a FUSE passthrough here, the store
   read through it: cache on vs off.
3. One `imstore get KEY --version 1` process, cache on vs --no-cache, beside
   `python -c "import typer"` (the start-up anchor): the cache must not slow it.
4. How long a put takes to be refused while the store is unavailable (goal < 1 s).

Usage: .venv/bin/python bench/bench_cache.py [--gets 20000] [--keys 200] [--runs 3]
"""

from __future__ import annotations

import argparse
import builtins
import io
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import imstore.cache  # noqa: E402
from imstore import Store  # noqa: E402
from imstore.cache import CacheSettings  # noqa: E402
from imstore.errors import Unavailable  # noqa: E402

OBJECT_SIZE = 4096
VERSIONS = 3


def make_store(root: Path, keys: int) -> Path:
    path = root / "store"
    Store.init(path)[0].close()
    with Store.open(path) as store:
        for number in range(keys):
            for _ in range(VERSIONS):
                store.put(f"hot/{number}", os.urandom(OBJECT_SIZE))
    return path


def timed_gets(path: Path, cache: CacheSettings | None, picks: list[tuple[str, int]]) -> float:
    """Seconds for len(picks) gets by key and version after one warm-up pass over them."""
    with Store.open(path, cache=cache) as store:
        for key, version in set(picks):
            store.get(key, version)
        start = time.perf_counter()
        for key, version in picks:
            store.get(key, version)
        return time.perf_counter() - start


@contextmanager
def slow_store(path: Path, delay: float = 0.001):
    """Every open() and stat() of a path under the store sleeps `delay` first (a slow NAS)."""
    prefix = str(path)
    originals = {"open": builtins.open, "os_open": os.open, "stat": os.stat}

    def slowed(original):
        def call(target, *args, **kwargs):
            if isinstance(target, (str, os.PathLike)) and os.fspath(target).startswith(prefix):
                time.sleep(delay)
            return original(target, *args, **kwargs)

        return call

    builtins.open = io.open = slowed(originals["open"])  # type: ignore[assignment]
    os.open = slowed(originals["os_open"])  # type: ignore[assignment]
    os.stat = slowed(originals["stat"])  # type: ignore[assignment]
    try:
        yield
    finally:
        builtins.open = io.open = originals["open"]  # type: ignore[assignment]
        os.open = originals["os_open"]  # type: ignore[assignment]
        os.stat = originals["stat"]  # type: ignore[assignment]


@contextmanager
def fuse_passthrough(source: Path, mountpoint: Path):
    """The store seen through a bindfs FUSE mount (every call goes through a user-space daemon), or None."""
    import shutil

    if shutil.which("bindfs") is None or not os.path.exists("/dev/fuse"):
        yield None
        return
    mountpoint.mkdir()
    if subprocess.run(["bindfs", str(source), str(mountpoint)], capture_output=True).returncode != 0:
        yield None
        return
    try:
        yield mountpoint
    finally:
        unmount = ["fusermount", "-u", str(mountpoint)] if shutil.which("fusermount") else ["umount", str(mountpoint)]
        subprocess.run(unmount, check=False)


def best_of(runs: int, measure) -> float:
    return min(measure() for _ in range(runs))


def run_measured(command: list[str], env: dict) -> tuple[float, float]:
    """(wall seconds, CPU seconds user+sys) of one process; CPU time is what other load disturbs least."""
    start = time.perf_counter()
    child = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _pid, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise RuntimeError(f"{command} failed with {child.returncode}")
    return wall, usage.ru_utime + usage.ru_stime


def callgrind_instructions(command: list[str], env: dict) -> int | None:
    """Instructions one process executes (valgrind callgrind): repeatable whatever the load, or None."""
    import re
    import shutil

    if shutil.which("valgrind") is None:
        return None
    done = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", *command],
        env=env,
        stdout=subprocess.DEVNULL,  # the object's bytes
        stderr=subprocess.PIPE,
    )
    found = re.search(r"Collected : (\d+)", done.stderr.decode("utf-8", "replace"))
    return int(found.group(1)) if done.returncode == 0 and found else None


def cli_commands(path: Path) -> dict[str, list[str]]:
    python = sys.executable
    get = [python, "-m", "imstore", "--store", str(path)]
    return {
        "import typer": [python, "-c", "import typer"],
        "get --no-cache": [*get, "--no-cache", "get", "hot/0", "--version", "1"],
        "get (cache)": [*get, "get", "hot/0", "--version", "1"],
        "get latest --no-cache": [*get, "--no-cache", "get", "hot/0"],
        "get latest (cache)": [*get, "get", "hot/0"],
    }


def cli_get_times(path: Path, cache_dir: Path, runs: int) -> dict[str, tuple[float, float]]:
    """Median (wall, CPU) time of one `imstore get` process, cache on and off, and of `import typer`."""
    env = {**os.environ, "IMSTORE_CACHE_DIR": str(cache_dir)}
    commands = cli_commands(path)
    subprocess.run(commands["get (cache)"], env=env, check=True, capture_output=True)  # fill
    subprocess.run(commands["get latest (cache)"], env=env, check=True, capture_output=True)
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
    for _ in range(runs):
        for name, command in commands.items():  # interleaved, so drift hits all alike
            samples[name].append(run_measured(command, env))
    return {
        name: (statistics.median(wall for wall, _ in values), statistics.median(cpu for _, cpu in values))
        for name, values in samples.items()
    }


def cold_open_get_seconds(path: Path, cache: CacheSettings | None, version: int | None, runs: int) -> float:
    """Median time of what one `imstore get` does after start-up: open the store, get, close."""
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        with Store.open(path, cache=cache) as store:
            store.get("hot/0", version)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def refused_write_seconds(path: Path, cache: CacheSettings) -> dict[str, float]:
    """Time for a put to fail with Unavailable during each kind of outage."""
    results = {}
    aside = path.parent / "aside"
    for kind in ("store renamed away", "objects/ replaced by a file"):
        moved = path if kind.startswith("store") else path / "objects"
        os.rename(moved, aside)
        if kind.startswith("objects"):
            moved.write_bytes(b"x")
        try:
            start = time.perf_counter()
            try:
                with Store.open(path, cache=cache) as store:
                    store.put("hot/0", b"refused")
                raise AssertionError("the put was not refused")
            except Unavailable:
                results[kind] = time.perf_counter() - start
        finally:
            if moved.is_file():
                moved.unlink()
            os.rename(aside, moved)
    return results


def report(name: str, seconds: float, gets: int, note: str = "") -> None:
    print(f"  {name:20s} {seconds:8.3f} s {seconds / gets * 1e6:8.1f} us/get   {note}".rstrip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gets", type=int, default=20_000)
    parser.add_argument("--keys", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--cli-runs", type=int, default=15)
    args = parser.parse_args()
    rng = random.Random(4)
    with tempfile.TemporaryDirectory(prefix="imstore-bench-cache-") as temp:
        root = Path(temp)
        path = make_store(root, args.keys)
        cache = CacheSettings(directory=root / "cache")
        picks = [(f"hot/{rng.randrange(args.keys)}", rng.randint(1, VERSIONS)) for _ in range(args.gets)]
        print(f"{args.gets} gets of hot {OBJECT_SIZE // 1024} KiB objects by key and version, {args.keys} keys x {VERSIONS} versions")

        off = best_of(args.runs, lambda: timed_gets(path, None, picks))
        on = best_of(args.runs, lambda: timed_gets(path, cache, picks))
        saved = imstore.cache.MEMO_BYTES, imstore.cache.MEMO_RECORDS
        imstore.cache.MEMO_BYTES, imstore.cache.MEMO_RECORDS = 0, 0
        try:
            diskcache_only = best_of(args.runs, lambda: timed_gets(path, cache, picks))
        finally:
            imstore.cache.MEMO_BYTES, imstore.cache.MEMO_RECORDS = saved
        report("--no-cache", off, args.gets)
        report("cache", on, args.gets, f"ratio {on / off:.2f}x (goal <= 1.0x, target <= 0.7x)")
        report("cache, memo off", diskcache_only, args.gets, f"ratio {diskcache_only / off:.2f}x")

        with slow_store(path):
            slow_off = timed_gets(path, None, picks)
            slow_on = timed_gets(path, cache, picks)
        print("same gets, every open()/stat() of a store file delayed 1 ms (fault layer)")
        report("--no-cache", slow_off, args.gets)
        report("cache", slow_on, args.gets, f"ratio {slow_on / slow_off:.3f}x (goal <= 0.2x)")

        with fuse_passthrough(path, root / "fuse") as mounted:
            if mounted is None:
                print("FUSE passthrough: skipped (needs bindfs and /dev/fuse)")
            else:
                fuse_cache = CacheSettings(directory=root / "fuse-cache")
                fuse_off = best_of(args.runs, lambda: timed_gets(mounted, None, picks))
                fuse_on = best_of(args.runs, lambda: timed_gets(mounted, fuse_cache, picks))
                print("same gets, the store read through a bindfs FUSE passthrough")
                report("--no-cache", fuse_off, args.gets)
                report("cache", fuse_on, args.gets, f"ratio {fuse_on / fuse_off:.3f}x (goal <= 0.2x)")

        times = cli_get_times(path, root / "cli-cache", args.cli_runs)
        anchor_wall, anchor_cpu = times["import typer"]
        print(f"one process each, median of {args.cli_runs} (interleaved); wall and CPU (user+sys) time")
        for name, (wall, cpu) in times.items():
            wall_part = f"wall {wall * 1e3:7.1f} ms {wall / anchor_wall:5.2f}x"
            print(f"  {name:22s} {wall_part}   cpu {cpu * 1e3:7.1f} ms {cpu / anchor_cpu:5.2f}x import typer")
        for label, on_name, off_name in (
            ("get --version", "get (cache)", "get --no-cache"),
            ("get latest", "get latest (cache)", "get latest --no-cache"),
        ):
            (on_wall, on_cpu), (off_wall, off_cpu) = times[on_name], times[off_name]
            print(f"  cache / no-cache, {label}: wall {on_wall / off_wall:.2f}x, cpu {on_cpu / off_cpu:.2f}x (goal <= 1.0x)")

        env = {**os.environ, "IMSTORE_CACHE_DIR": str(root / "cli-cache")}  # filled by cli_get_times
        counts = {name: callgrind_instructions(command, env) for name, command in cli_commands(path).items()}
        if None in counts.values():
            print("instruction counts: skipped (needs valgrind)")
        else:
            print("instructions per process (valgrind callgrind; independent of other load)")
            for name, count in counts.items():
                print(f"  {name:22s} {count / 1e6:8.1f} M   {count / counts['import typer']:.3f}x import typer")
            version_ratio = counts["get (cache)"] / counts["get --no-cache"]
            latest_ratio = counts["get latest (cache)"] / counts["get latest --no-cache"]
            print(f"  cache / no-cache: get --version {version_ratio:.3f}x, get latest {latest_ratio:.3f}x (goal <= 1.0x)")

        cold_cache = CacheSettings(directory=root / "cold-cache")
        print("open store + one get + close, in this process (what a get process does after start-up), median of 500")
        for label, version in (("get --version 1", 1), ("get latest", None)):
            cold_open_get_seconds(path, cold_cache, version, 1)  # fill
            off_cold = cold_open_get_seconds(path, None, version, 500)
            on_cold = cold_open_get_seconds(path, cold_cache, version, 500)
            print(f"  {label:16s} --no-cache {off_cold * 1e3:6.3f} ms   cache {on_cold * 1e3:6.3f} ms   ratio {on_cold / off_cold:.2f}x")

        for kind, seconds in refused_write_seconds(path, cache).items():
            print(f"put refused, {kind}: {seconds * 1e3:.2f} ms (goal < 1 s)")


if __name__ == "__main__":
    main()
