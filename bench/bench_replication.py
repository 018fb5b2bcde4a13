"""Benchmark replication: a standby's lag under a steady write rate, and sync mode's cost.

    python bench/bench_replication.py [--rate 300] [--seconds 10] [--clients 32] [--put-seconds 10]

1. Lag: PUTs at --rate per second on a primary with one `serve --follow` standby;
   for each acknowledged PUT, the time until the standby's /healthz head reaches its
   seq (the standby then serves it). p50 and p99; goal p99 <= 100 ms.
2. Sync vs async: durable 4 KiB PUTs from --clients clients for --put-seconds, against
   a primary whose standby is asynchronous, then one with `--sync-standbys 1`.
   Goal: sync >= 0.6x async. The anchor is the async run, in the same process.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

IMSTORE = [sys.executable, "-m", "imstore"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Node:
    """One `imstore serve` (a primary, or a standby with --follow)."""

    def __init__(self, store: Path, log: Path, *args: str, env: dict | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen([*IMSTORE, "--store", str(store), "--no-cache", "serve", "--port", str(self.port), *args],
                                        stdout=open(log, "wb"), stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})  # fmt: skip
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if self.get("/healthz")[0] == 200:
                    return
            except OSError:
                pass
            if self.process.poll() is not None:
                raise SystemExit(f"serve exited: {log.read_text()[-800:]}")
            time.sleep(0.05)
        raise SystemExit("serve did not start within 60 s")

    def get(self, path: str) -> tuple[int, bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()


def token(store: Path, scope: str, name: str) -> str:
    done = subprocess.run([*IMSTORE, "--store", str(store), "token", "create", "--scope", scope, "--name", name],
                          capture_output=True, text=True, check=True)  # fmt: skip
    return done.stdout.strip().split()[-1]


def pair(root: Path, name: str, *primary_args: str) -> tuple[Node, Node, str]:
    """A primary (with primary_args) and a standby following it; returns (primary, standby, write token)."""
    store = root / f"{name}-primary"
    subprocess.run([*IMSTORE, "init", str(store)], check=True, capture_output=True)
    write, replicate = token(store, "write", "w"), token(store, "replicate", "standby")
    primary = Node(store, root / f"{name}-primary.log", "--workers", "2", *primary_args)
    standby = Node(root / f"{name}-standby", root / f"{name}-standby.log", "--workers", "1", "--follow", primary.url,
                   env={"IMSTORE_TOKEN": replicate})  # fmt: skip
    return primary, standby, write


def put(connection: http.client.HTTPConnection, key: str, body: bytes, write: str) -> dict:
    connection.request("PUT", f"/v1/keys/{key}", body=body, headers={"Authorization": f"Bearer {write}"})
    response = connection.getresponse()
    data = response.read()
    if response.status != 201:
        raise RuntimeError(f"PUT {key}: {response.status} {data[:200]!r}")
    return json.loads(data)


def lag(root: Path, rate: float, seconds: float) -> list[float]:
    """Seconds from each acknowledgement to the standby's head reaching it, at `rate` PUTs per second."""
    primary, standby, write = pair(root, "lag")
    acked: dict[int, float] = {}
    seen: dict[int, float] = {}
    done = threading.Event()

    def watch() -> None:
        last = 0
        while not done.is_set() or last < max(acked, default=0):
            _status, body = standby.get("/healthz")
            now = time.perf_counter()
            head = json.loads(body)["head"]["seq"]
            for seq in range(last + 1, head + 1):
                seen[seq] = now
            last = max(last, head)
            if done.is_set() and time.perf_counter() - stop_at > 30:
                break

    stop_at = time.perf_counter() + 3600
    watcher = threading.Thread(target=watch)
    watcher.start()
    connection = http.client.HTTPConnection("127.0.0.1", primary.port, timeout=30)
    try:
        start = time.perf_counter()
        for number in range(int(rate * seconds)):
            time.sleep(max(0.0, start + number / rate - time.perf_counter()))  # the schedule, not a wait for a condition
            document = put(connection, f"lag{number}", os.urandom(1024), write)
            acked[document["seq"]] = time.perf_counter()
    finally:
        stop_at = time.perf_counter()
        done.set()
        watcher.join(60)
        primary.stop()
        standby.stop()
    return [seen[seq] - at for seq, at in acked.items() if seq in seen]


def throughput(root: Path, name: str, clients: int, seconds: float, *primary_args: str) -> float:
    """Durable 4 KiB PUTs per second from `clients` clients on a primary with one standby."""
    primary, standby, write = pair(root, name, *primary_args)
    counts = [0] * clients
    deadline = time.perf_counter() + seconds

    def client(number: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", primary.port, timeout=60)
        body = os.urandom(4096)
        while time.perf_counter() < deadline:
            put(connection, f"c{number}-{counts[number]}", body, write)
            counts[number] += 1

    threads = [threading.Thread(target=client, args=(number,)) for number in range(clients)]
    try:
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(seconds + 120)
        elapsed = time.perf_counter() - started
    finally:
        primary.stop()
        standby.stop()
    return sum(counts) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=300)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--put-seconds", type=float, default=10)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-replication-", dir=os.environ.get("BENCH_TMP")) as temp:
        root = Path(temp)
        lags = sorted(lag(root, options.rate, options.seconds))
        if not lags:
            raise SystemExit("the standby never caught up")
        p50, p99 = statistics.median(lags), lags[min(len(lags) - 1, int(len(lags) * 0.99))]
        print(f"lag at {options.rate:g} PUT/s over {options.seconds:g} s: {len(lags)} writes,"
              f" p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms (goal p99 <= 100 ms)")  # fmt: skip
        asynchronous = throughput(root, "async", options.clients, options.put_seconds)
        synchronous = throughput(root, "sync", options.clients, options.put_seconds, "--sync-standbys", "1", "--sync-timeout", "10")
    print(f"4 KiB PUTs from {options.clients} clients: async {asynchronous:.0f}/s, sync {synchronous:.0f}/s")
    print(f"sync / async = {synchronous / asynchronous:.2f}x (goal >= 0.6x)")


if __name__ == "__main__":
    main()
