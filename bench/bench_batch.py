"""Many small reads: `imstore get --batch` against one `imstore get` process per read, and git cat-file --batch.

Goals (issue 15): 10,000 small reads with `get --batch` >= 50x faster than 10,000
`imstore get` processes, and <= 3x `git cat-file --batch` on the same 10,000 blobs
(loose objects in a fresh repository, as imstore's are loose files).

The processes are sampled: --sample of them run one after another and the time is
scaled to --count (each is a full start-up plus one read; they do not depend on
how many ran before). Every case gets one untimed warm-up (the read cache fills,
the page cache is warm for all), then the cases are interleaved round by round
and medians reported. With --remote, `imstore --remote URL get --batch` through a
real `imstore serve` (2 workers) is timed too.

Example: .venv/bin/python bench/bench_batch.py --count 10000 --sample 300 --rounds 3 --remote
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import compile_package, imstore_command, interleaved, load_note, median, print_ratio, print_times  # noqa: E402

from imstore import Store  # noqa: E402


def timed_with_input(command: list[str], stdin_path: Path, env: dict) -> float:
    """Wall-clock seconds of one process fed stdin_path; its output is read (and dropped) as it comes."""
    start = time.perf_counter()
    with open(stdin_path, "rb") as stdin:
        completed = subprocess.run(command, stdin=stdin, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    elapsed = time.perf_counter() - start
    if completed.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {completed.returncode}: {completed.stderr.decode(errors='replace')}")
    return elapsed


def processes(command: list[str], keys: list[str], env: dict, count: int) -> float:
    """Seconds for one process per key (the sample), scaled to count reads."""
    start = time.perf_counter()
    for key in keys:
        subprocess.run([*command, key], stdout=subprocess.DEVNULL, check=True, env=env)
    return (time.perf_counter() - start) * count / len(keys)


def build(work: Path, count: int, size: int) -> tuple[Path, Path, Path, Path]:
    """A store and a git repository holding the same count blobs; the key and blob id lists."""
    store_path, repo, blobs = work / "store", work / "repo", work / "blobs"
    blobs.mkdir()
    contents = [os.urandom(size) for _ in range(count)]
    store, _ = Store.init(store_path)
    with store:
        for start in range(0, count, 1000):
            store.put_many([(f"k/{number:06d}", contents[number], {}) for number in range(start, min(start + 1000, count))])
    for number, data in enumerate(contents):
        (blobs / f"{number:06d}").write_bytes(data)
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    paths = "\n".join(str(blobs / f"{number:06d}") for number in range(count)).encode()
    ids = subprocess.run(["git", "-C", str(repo), "hash-object", "-w", "--stdin-paths"], input=paths, capture_output=True,
                         check=True).stdout  # fmt: skip
    keys_file, ids_file = work / "keys.txt", work / "ids.txt"
    keys_file.write_text("".join(f"k/{number:06d}\n" for number in range(count)))
    ids_file.write_bytes(ids)
    return store_path, repo, keys_file, ids_file


def start_server(store_path: Path, work: Path) -> tuple[subprocess.Popen, str, Path]:
    from imstore.server.auth import TokenStore

    token_file = work / "token"
    token_file.write_text(TokenStore(store_path).create("bench", "read"))
    token_file.chmod(0o600)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = open(work / "serve.log", "wb")
    server = subprocess.Popen([*imstore_command(), "--store", str(store_path), "serve", "--port", str(port), "--workers", "2"],
                              stdout=log, stderr=log)  # fmt: skip
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return server, f"http://127.0.0.1:{port}", token_file
        time.sleep(0.05)
    server.kill()
    raise RuntimeError("imstore serve did not start")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10_000, help="reads (and blobs)")
    parser.add_argument("--size", type=int, default=1024, help="bytes per blob")
    parser.add_argument("--sample", type=int, default=300, help="`imstore get` processes actually run (scaled to --count)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--remote", action="store_true", help="also time --remote get --batch through imstore serve")
    args = parser.parse_args(argv)
    if shutil.which("git") is None:
        print("skipped: git is not installed")
        return 0
    print(load_note())
    work = Path(tempfile.mkdtemp(prefix="imstore-bench-batch-"))
    server = None
    try:
        store_path, repo, keys_file, ids_file = build(work, args.count, args.size)
        env = {**os.environ, "IMSTORE_CACHE_DIR": str(work / "cache"), "XDG_STATE_HOME": str(work / "state")}  # state: bench_s3.py
        compile_package()  # processes load imstore from bytecode, as after an install
        imstore = [*imstore_command(), "--store", str(store_path)]
        sample = random.Random(15).sample(keys_file.read_text().split(), min(args.sample, args.count))
        cases = {
            "imstore get --batch": lambda: timed_with_input([*imstore, "get", "--batch"], keys_file, env),
            "git cat-file --batch": lambda: timed_with_input(["git", "-C", str(repo), "cat-file", "--batch"], ids_file, env),
            f"imstore get, one process each (x{len(sample)})": lambda: processes([*imstore, "get"], sample, env, args.count),
        }
        if args.remote:
            server, url, token_file = start_server(store_path, work)
            remote = [*imstore_command(), "--remote", url, "--token-file", str(token_file), "get", "--batch"]
            cases["imstore --remote get --batch"] = lambda: timed_with_input(remote, keys_file, env)
        for case in cases.values():  # warm-up: read cache, page cache, the gateway's memory
            case()
        times = interleaved(cases, args.rounds)
        print_times(f"{args.count:,} reads of {args.size} B (process times scaled to {args.count:,}; {args.rounds} rounds)", times)
        batch = median(times["imstore get --batch"])
        per_process = median(times[next(name for name in times if "one process" in name)])
        git = median(times["git cat-file --batch"])
        print_ratio("one process each / get --batch", per_process / batch, ">= 50x", per_process / batch >= 50)
        print_ratio("get --batch / git cat-file --batch", batch / git, "<= 3x", batch / git <= 3)
        if args.remote:
            print(f"  --remote get --batch / local get --batch  {median(times['imstore --remote get --batch']) / batch:8.2f}x   (info)")
    finally:
        if server is not None:
            server.send_signal(signal.SIGTERM)
            server.wait(30)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
