"""`imstore get` and `imstore history KEY --limit 20` on a big store vs a small one.

Goal (issue 2): on 200,000 versions <= 1.2x the time on 1,000 versions (flat in
store size). The anchor is imstore itself on the small store, timed in the same run.

Both stores are built (untimed) through the library API: a few real objects, then
records appended in batch frames of up to 10,000 through `Committer._append`, with the
hash chain made by `records.Chain` as every write makes it. The measured key's
versions are spread over the whole log, between the versions of many filler keys.
Every command is a real CLI process; runs are interleaved; medians.

Example: .venv/bin/python bench/bench_scale.py --big 200000 --small 1000 --runs 20
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import imstore_command, interleaved, load_note, median, print_ratio, print_times, timed

GOAL = 1.2
KEY = "bench/target"
KEY_VERSIONS = 50
FILLER_VERSIONS_PER_KEY = 20
BATCH = 10_000


def build_store(path: Path, versions: int) -> None:
    """A store of `versions` versions: KEY_VERSIONS of KEY, the rest filler keys."""
    from imstore import Store

    store, _ = Store.init(path)
    with store:
        objects = [store.objects.write_bytes(f"version {number} of the measured key\n".encode() * 20) for number in range(KEY_VERSIONS)]
        filler_object = store.objects.write_bytes(b"filler\n")
        filler_keys = max(1, (versions - KEY_VERSIONS) // FILLER_VERSIONS_PER_KEY)
        key_every = max(1, versions // KEY_VERSIONS)
        committer = store.committer
        with committer.writing() as index:
            chain = committer.chain(index)
            next_version: dict[str, int] = {}
            key_written = filler_written = 0
            for number in range(versions):
                if key_written < KEY_VERSIONS and (number % key_every == key_every - 1 or versions - number <= KEY_VERSIONS - key_written):
                    key, (object_id, size) = KEY, objects[key_written]
                    key_written += 1
                else:
                    key, (object_id, size) = f"filler/{filler_written % filler_keys:06d}", filler_object
                    filler_written += 1
                version = next_version[key] = next_version.get(key, 0) + 1
                chain.add(op="put", key=key, version=version, hash=object_id, size=size)
                if len(chain) == BATCH:
                    committer._append(chain)
                    chain = committer.chain(index)
            if len(chain):
                committer._append(chain)


def run(big: int, small: int, runs: int) -> dict:
    imstore = imstore_command()
    with tempfile.TemporaryDirectory(prefix="imstore-bench-scale-") as temp:
        stores = {}
        for label, versions in (("small", small), ("big", big)):
            stores[label] = Path(temp) / label
            started = time.perf_counter()
            build_store(stores[label], versions)
            print(f"  built the {label} store: {versions:,} versions in {time.perf_counter() - started:.1f} s (untimed)")
        commands = {}
        for label, versions in (("small", small), ("big", big)):
            base = [*imstore, "--store", str(stores[label])]
            commands[f"get, {versions:,} versions"] = [*base, "get", KEY]
            commands[f"history --limit 20, {versions:,} versions"] = [*base, "history", KEY, "--limit", "20"]
        for command in commands.values():  # untimed warm-up (and a check that each command works)
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        cpu: dict[str, list[float]] = {name: [] for name in commands}

        def case(name: str):
            return lambda: timed(commands[name], cpu=cpu[name])

        times = interleaved({name: case(name) for name in commands}, runs)
    medians = {name: median(values) for name, values in times.items()}
    print_times(f"get and history on {small:,} vs {big:,} versions, {runs} runs each ({load_note()})", times, unit="ms")
    print_times("CPU time (user + system) of the same runs", cpu, unit="ms")
    ratios = {}
    for command in ("get", "history --limit 20"):
        ratio = medians[f"{command}, {big:,} versions"] / medians[f"{command}, {small:,} versions"]
        cpu_ratio = median(cpu[f"{command}, {big:,} versions"]) / median(cpu[f"{command}, {small:,} versions"])
        print_ratio(f"{command}: big / small", ratio, f"<= {GOAL}", ratio <= GOAL)
        print_ratio(f"{command}: big / small, CPU time", cpu_ratio, f"<= {GOAL}", cpu_ratio <= GOAL)
        ratios[command] = ratio
    return {"big": big, "small": small, "runs": runs, "medians": medians, "ratios": ratios}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--big", type=int, default=200_000)
    parser.add_argument("--small", type=int, default=1_000)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="20,000 vs 1,000 versions, 5 runs")
    args = parser.parse_args(argv)
    if args.quick:
        args.big, args.runs = min(args.big, 20_000), min(args.runs, 5)
    run(args.big, args.small, args.runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
