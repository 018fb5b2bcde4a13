"""Benchmark `imstore import` against git, borg, restic and cp+sync, measured in the same run.

    python bench/bench_import.py [--rounds 5] [--large-rounds 3] [--skip-large]

1. 10,000 files of 1-16 KiB in 100 directories: `imstore import` (fresh store)
   vs `git add -A` (fresh repo), `borg create` (fresh repo, no encryption) and
   `restic backup` (fresh repo). Goals: <= 0.5x git, <= 0.5x borg.
2. Re-import of the unchanged tree vs `git add -A` of the unchanged tree: <= 2x.
3. A directory of four 128 MiB files: import vs `cp -r` + `sync`: <= 1.25x.

Runs are interleaved (the order rotates each round) and medians are reported,
because the machine is shared. Anchors that are not installed are skipped.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IMSTORE = str(Path(sys.executable).parent / "imstore")
QUIET = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}


def run(args: list[str], *, cwd: Path | None = None, env: dict | None = None) -> None:
    result = subprocess.run(args, cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, args))} failed ({result.returncode}): {result.stderr.decode()[-500:]}")


def timed(args: list[str], **options) -> float:
    start = time.perf_counter()
    run(args, **options)
    return time.perf_counter() - start


def make_small_tree(root: Path, files: int = 10_000, directories: int = 100) -> int:
    rng = random.Random(42)
    total = 0
    for number in range(files):
        directory = root / f"dir{number % directories:03d}"
        directory.mkdir(parents=True, exist_ok=True)
        size = rng.randint(1024, 16 * 1024)
        (directory / f"file{number:05d}.bin").write_bytes(rng.randbytes(size))
        total += size
    return total


def make_large_tree(root: Path, files: int = 4, size: int = 128 << 20) -> None:
    root.mkdir(parents=True)
    for number in range(files):
        with open(root / f"big{number}.bin", "wb") as handle:
            for _ in range(size // (8 << 20)):
                handle.write(os.urandom(8 << 20))


def load() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


class Scratch:
    """Fresh directories per measurement, removed right after."""

    def __init__(self, base: Path):
        self.base, self.count = base, 0

    def fresh(self, name: str) -> Path:
        self.count += 1
        path = self.base / f"{name}-{self.count}"
        return path

    @staticmethod
    def drop(path: Path) -> None:
        shutil.rmtree(path, ignore_errors=True)


def imstore_import(scratch: Scratch, tree: Path, results: dict) -> None:
    store = scratch.fresh("store")
    run([IMSTORE, "init", str(store), "-q"])
    results.setdefault("imstore import", []).append(timed([IMSTORE, "--store", str(store), "import", str(tree), "-q"]))
    results.setdefault("imstore re-import", []).append(timed([IMSTORE, "--store", str(store), "import", str(tree), "-q"]))
    # the floor under any imstore command: interpreter + CLI start-up
    results.setdefault("imstore --version (start-up)", []).append(timed([IMSTORE, "--version"]))
    scratch.drop(store)


def git_add(scratch: Scratch, tree: Path, results: dict) -> None:
    repo = scratch.fresh("git")
    repo.mkdir()
    run(["git", "init", "-q", str(repo)])
    env = {"GIT_DIR": str(repo / ".git"), "GIT_WORK_TREE": str(tree)}
    results.setdefault("git add -A", []).append(timed(["git", "add", "-A"], cwd=tree, env=env))
    results.setdefault("git add -A (unchanged)", []).append(timed(["git", "add", "-A"], cwd=tree, env=env))
    scratch.drop(repo)


def borg_create(scratch: Scratch, tree: Path, results: dict) -> None:
    repo = scratch.fresh("borg")
    env = {"BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes", "BORG_RELOCATED_REPO_ACCESS_IS_OK": "yes",
           "BORG_BASE_DIR": str(scratch.base / "borg-home")}  # fmt: skip
    run(["borg", "init", "-e", "none", str(repo)], env=env)
    results.setdefault("borg create", []).append(timed(["borg", "create", f"{repo}::a", "."], cwd=tree, env=env))
    scratch.drop(repo)


def restic_backup(scratch: Scratch, tree: Path, results: dict) -> None:
    repo = scratch.fresh("restic")
    env = {"RESTIC_PASSWORD": "bench", "RESTIC_REPOSITORY": str(repo), "RESTIC_CACHE_DIR": str(scratch.base / "restic-cache")}
    run(["restic", "init", "-q"], env=env)
    results.setdefault("restic backup", []).append(timed(["restic", "backup", "-q", "."], cwd=tree, env=env))
    scratch.drop(repo)


def large_import(scratch: Scratch, tree: Path, results: dict) -> None:
    store = scratch.fresh("store")
    run([IMSTORE, "init", str(store), "-q"])
    run(["sync"])  # start from a clean page cache write-back for both sides
    results.setdefault("imstore import 4x128MiB", []).append(timed([IMSTORE, "--store", str(store), "import", str(tree), "-q"]))
    scratch.drop(store)


def large_copy(scratch: Scratch, tree: Path, results: dict) -> None:
    target = scratch.fresh("copy")
    run(["sync"])
    start = time.perf_counter()
    run(["cp", "-r", str(tree), str(target)])
    run(["sync"])
    results.setdefault("cp -r + sync 4x128MiB", []).append(time.perf_counter() - start)
    scratch.drop(target)


def report(results: dict, pairs: list[tuple[str, str, float]]) -> None:
    print(f"{'measurement':32} {'median s':>9}  runs")
    for name, values in results.items():
        print(f"{name:32} {statistics.median(values):9.3f}  {' '.join(f'{v:.3f}' for v in values)}")
    print()
    for ours, anchor, goal in pairs:
        if ours in results and anchor in results:
            ratio = statistics.median(results[ours]) / statistics.median(results[anchor])
            verdict = "ok" if ratio <= goal else "MISSED"
            print(f"{ours} / {anchor}: {ratio:.2f}x (goal <= {goal}x) {verdict}")
        else:
            print(f"{ours} / {anchor}: skipped (not measured: {anchor.split()[0]} not installed, or excluded by an option)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--large-rounds", type=int, default=3)
    parser.add_argument("--skip-large", action="store_true")
    parser.add_argument("--only-large", action="store_true")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="imstore-bench-import-", dir=os.environ.get("BENCH_TMP")))
    scratch = Scratch(base)
    try:
        tree = base / "tree"
        total = 0 if args.only_large else make_small_tree(tree)
        print(f"small tree: 10,000 files, {total / 2**20:.1f} MiB; cpus {os.cpu_count()}; load at start {load()}")
        runners = [imstore_import, git_add]
        runners += [borg_create] if shutil.which("borg") else []
        runners += [restic_backup] if shutil.which("restic") else []
        results: dict[str, list[float]] = {}
        for number in range(0 if args.only_large else args.rounds):
            order = runners[number % len(runners) :] + runners[: number % len(runners)]
            for runner in order:
                runner(scratch, tree, results)
        scratch.drop(tree)
        if not args.skip_large:
            large = base / "large"
            make_large_tree(large)
            for number in range(args.large_rounds):
                for runner in (large_import, large_copy) if number % 2 == 0 else (large_copy, large_import):
                    runner(scratch, large, results)
        print(f"load at end {load()}\n")
        report(
            results,
            [
                ("imstore import", "git add -A", 0.5),
                ("imstore import", "borg create", 0.5),
                ("imstore import", "restic backup", 0.5),
                ("imstore re-import", "git add -A (unchanged)", 2.0),
                ("imstore import 4x128MiB", "cp -r + sync 4x128MiB", 1.25),
            ],
        )
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
