"""imstore serve against nginx on loopback: 4 KiB GETs, a 1 GiB streamed GET, durable 4 KiB PUTs.

Goals (issue 5): 4 KiB object GETs through the gateway with 2 workers >= 0.13x nginx's
requests/s (nginx serving the same object file from objects/); (issue 15) the same GETs by
key >= 0.15x nginx; a 1 GiB GET >= 0.5x
nginx's throughput with the gateway's memory flat; durable 4 KiB PUTs from 32
concurrent clients >= 2,000/s, beside the disk's fsync rate measured here.
nginx and wrk come from Debian's packages; without them the benchmark says so and exits 0.

Example: .venv/bin/python bench/bench_serve.py --seconds 10 --big-mib 1024

--baseline DIR runs a second `imstore serve` from another checkout (e.g. `git worktree add /tmp/old
COMMIT`) on its own store, made by that checkout's code, and interleaves its memory GETs (by hash and
by key) with this checkout's: a before/after ratio on the same machine in the same minutes.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from imstore import Store
from imstore.server.auth import TokenStore

IMSTORE = [sys.executable, "-m", "imstore"]

NGINX_CONF = """
{user}
worker_processes 2;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    client_body_temp_path {prefix}/tmp;
    proxy_temp_path {prefix}/tmp;
    fastcgi_temp_path {prefix}/tmp;
    uwsgi_temp_path {prefix}/tmp;
    scgi_temp_path {prefix}/tmp;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        default_type application/octet-stream;
    }}
}}
"""

PUT_LUA = """
local counter = 0
local pad = string.rep("x", 4096 - 40)
request = function()
    counter = counter + 1
    local id = string.format("%d-%d-%d", wrk.thread_id or 0, counter, math.random(1, 1000000000))
    local body = string.sub(id .. pad, 1, 4096)
    return wrk.format("PUT", "/v1/keys/bench%2F" .. id, nil, body)
end
setup = function(thread)
    thread:set("id", tostring(thread))
end
init = function(args)
    math.randomseed(os.time() + tonumber(string.sub(tostring({}), 8), 16) % 100000)
end
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def wrk(url: str, seconds: float, connections: int, token: str | None = None, script: str | None = None,
        headers: tuple[str, ...] = ()) -> float:
    command = ["wrk", "-t2", f"-c{connections}", f"-d{int(seconds)}s", "--latency"]
    if token:
        command += ["-H", f"Authorization: Bearer {token}"]
    for header in headers:
        command += ["-H", header]
    if script:
        command += ["-s", script]
    out = subprocess.run([*command, url], capture_output=True, text=True, check=True).stdout
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise RuntimeError(f"wrk saw {errors.group(1)} error responses from {url}:\n{out}")
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))


def fsync_rate(directory: Path, seconds: float = 2.0) -> float:
    """4 KiB write + fsync in a loop on the store's file system: the disk's durable-write rate."""
    path = directory / ".fsync-probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    count, block = 0, b"f" * 4096
    deadline = time.perf_counter() + seconds
    try:
        while time.perf_counter() < deadline:
            os.write(fd, block)
            os.fsync(fd)
            count += 1
    finally:
        os.close(fd)
        path.unlink()
    return count / seconds


class Sampler(threading.Thread):
    """Peak RSS of some processes, sampled every 20 ms."""

    def __init__(self, pids: list[int]):
        super().__init__(daemon=True)
        self.processes = [psutil.Process(pid) for pid in pids]
        self.peak = {pid: 0 for pid in pids}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            for process in self.processes:
                try:
                    self.peak[process.pid] = max(self.peak[process.pid], process.memory_info().rss)
                except psutil.Error:
                    pass
            self.stop.wait(0.02)


def download_rate(url: str, token: str | None, expected: int) -> float:
    command = ["curl", "-s", "-o", "/dev/null", "-w", "%{size_download} %{speed_download}"]
    if token:
        command += ["-H", f"Authorization: Bearer {token}"]
    size, speed = subprocess.run([*command, url], capture_output=True, text=True, check=True).stdout.split()
    if int(size) != expected:
        raise RuntimeError(f"{url} gave {size} bytes, not {expected}")
    return float(speed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10, help="length of each wrk run")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds per case (the median is reported)")
    parser.add_argument("--big-mib", type=int, default=1024, help="size of the large object")
    parser.add_argument("--dir", help="where to make the store [default: a temp dir under /tmp]")
    parser.add_argument("--parts", default="get,big,put", help="which parts to run (comma-separated: get, big, put)")
    parser.add_argument("--baseline", help="another checkout of imstore: its gateway's memory GETs interleaved with these (get part)")
    args = parser.parse_args(argv)
    missing = [tool for tool in ("nginx", "wrk", "curl") if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists()]
    if missing:
        print(f"skipped: {', '.join(missing)} not installed (apt-get install nginx wrk curl)")
        return 0
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    one, five, _ = os.getloadavg()
    print(f"machine: {os.cpu_count()} CPUs, load average {one:.2f} (1 min) {five:.2f} (5 min)")
    work = Path(tempfile.mkdtemp(prefix="imstore-bench-serve-", dir=args.dir))
    processes: list[subprocess.Popen] = []
    try:
        store_path = work / "store"
        store, _ = Store.init(store_path)
        small = store.put("small", os.urandom(4096)).version.hash
        token = TokenStore(store_path).create("bench", "write")
        # ---------------------------------------------------------------- servers
        nginx_port, gateway_port, worker_port = free_port(), free_port(), free_port()
        prefix = work / "nginx"
        (prefix / "tmp").mkdir(parents=True)
        user = "user root;" if os.geteuid() == 0 else ""  # the store is in a 0700 temp dir
        (prefix / "nginx.conf").write_text(NGINX_CONF.format(user=user, prefix=prefix, port=nginx_port, root=store_path / "objects"))
        processes.append(subprocess.Popen([nginx, "-c", str(prefix / "nginx.conf"), "-p", str(prefix), "-g", "daemon off;"],
                                          stderr=subprocess.DEVNULL))
        log = open(work / "serve.log", "wb")
        serve = subprocess.Popen([*IMSTORE, "--store", str(store_path), "serve", "--port", str(gateway_port), "--workers", "2"],
                                 stdout=log, stderr=log)
        processes.append(serve)
        single = subprocess.Popen([sys.executable, "-m", "imstore.server.worker_process", "--store", str(store_path), "--socket",
                                   str(work / "unused.sock"), "--tcp-port", str(worker_port)], stderr=subprocess.DEVNULL)
        processes.append(single)
        for port in (nginx_port, gateway_port, worker_port):
            wait_port(port)
        gateway_url = f"http://127.0.0.1:{gateway_port}"
        # "no-cache" makes the gateway pass every request to a worker instead of answering from its
        # memory of verified objects: it shows what the hop to a worker costs.
        urls = {
            "nginx": (f"http://127.0.0.1:{nginx_port}/{small[:2]}/{small[2:]}", None, ()),
            "gateway + 2 workers": (f"{gateway_url}/v1/objects/{small}", token, ()),
            "gateway, no-cache": (f"{gateway_url}/v1/objects/{small}", token, ("Cache-Control: no-cache",)),
            "1 worker, no gateway": (f"http://127.0.0.1:{worker_port}/v1/objects/{small}", None, ()),
            # By key (issue 15): the gateway answers from its memory while the log is unchanged (one stat).
            "gateway by key": (f"{gateway_url}/v1/keys/small", token, ()),
            "gateway by key, no-cache": (f"{gateway_url}/v1/keys/small", token, ("Cache-Control: no-cache",)),
        }
        parts = set(args.parts.split(","))
        # ---------------------------------------------------------------- 4 KiB GETs
        if "get" in parts and args.baseline:
            process, baseline_urls = baseline_server(Path(args.baseline).resolve(), work)
            processes.append(process)
            urls.update(baseline_urls)
        if "get" in parts:
            get_benchmark(urls, args)
        if "big" in parts:
            big_benchmark(store, work, serve, nginx_port, gateway_url, token, args)
        if "put" in parts:
            put_benchmark(store_path, work, gateway_url, token, args, serve.pid)
    finally:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
        if "store_path" in locals():  # after the servers stopped: nothing is writing any more
            store.close()
            with Store.open(store_path) as check:
                report = check.verify()
                verdict = "clean" if report.ok else "FAILED: " + "; ".join(report.problems[:3])
                print(f"store after the run: {report.records} records, verify {verdict}")
        shutil.rmtree(work, ignore_errors=True)
    return 0


BASELINE_SETUP = """
import os, sys
from imstore import Store
from imstore.server.auth import TokenStore
store, _ = Store.init(sys.argv[1])
print(store.put("small", os.urandom(4096)).version.hash, TokenStore(sys.argv[1]).create("bench", "write"))
"""


def baseline_server(checkout: Path, work: Path) -> tuple[subprocess.Popen, dict]:
    """`imstore serve` (2 workers) from another checkout, on a store of its own made by that code."""
    store_path, port = work / "baseline-store", free_port()
    # cwd=checkout: `python -m imstore` imports the package from the current directory first.
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    made = subprocess.run([sys.executable, "-c", BASELINE_SETUP, str(store_path)], cwd=checkout, env=env, capture_output=True,
                          text=True, check=True)  # fmt: skip
    small, token = made.stdout.split()
    log = open(work / "baseline-serve.log", "wb")
    process = subprocess.Popen([*IMSTORE, "--store", str(store_path), "serve", "--port", str(port), "--workers", "2"], cwd=checkout,
                               env=env, stdout=log, stderr=log)  # fmt: skip
    wait_port(port)
    url = f"http://127.0.0.1:{port}"
    return process, {"baseline by hash": (f"{url}/v1/objects/{small}", token, ()), "baseline by key": (f"{url}/v1/keys/small", token, ())}


def get_benchmark(urls: dict, args) -> None:
    rates: dict[str, list[float]] = {name: [] for name in urls}
    for round_number in range(args.rounds):
        names = list(urls)[round_number % len(urls):] + list(urls)[: round_number % len(urls)]
        for name in names:
            url, bearer, headers = urls[name]
            rates[name].append(wrk(url, args.seconds, 64, bearer, headers=headers))
    print(f"== 4 KiB object GETs, wrk -t2 -c64 -d{args.seconds:g}s, {args.rounds} interleaved rounds (median requests/s)")
    medians = {name: statistics.median(values) for name, values in rates.items()}
    for name, value in medians.items():
        print(f"  {name:24s} {value:10.0f}/s   runs: {', '.join(f'{v:.0f}' for v in rates[name])}")
    ratio = medians["gateway + 2 workers"] / medians["nginx"]
    print(f"  gateway / nginx = {ratio:.3f}x (goal >= 0.13x: {'met' if ratio >= 0.13 else 'MISSED'})")
    print(f"  gateway with every request sent to a worker (no-cache) / nginx = {medians['gateway, no-cache'] / medians['nginx']:.3f}x")
    print(f"  1 worker without the gateway / nginx = {medians['1 worker, no gateway'] / medians['nginx']:.3f}x")
    by_key = medians["gateway by key"] / medians["nginx"]
    print(f"  gateway by key / nginx = {by_key:.3f}x (goal >= 0.15x: {'met' if by_key >= 0.15 else 'MISSED'})")
    print(f"  gateway by key, every request to a worker (no-cache) / nginx = {medians['gateway by key, no-cache'] / medians['nginx']:.3f}x")
    if "baseline by key" in medians:
        print(f"  this checkout / the baseline: by hash {medians['gateway + 2 workers'] / medians['baseline by hash']:.2f}x,"
              f" by key {medians['gateway by key'] / medians['baseline by key']:.2f}x;"
              f" the baseline by key / nginx = {medians['baseline by key'] / medians['nginx']:.3f}x")


def big_benchmark(store, work, serve, nginx_port, gateway_url, token, args) -> None:
    size = args.big_mib << 20
    big_path = work / "big.bin"
    with open(big_path, "wb") as handle:
        block = os.urandom(1 << 20)
        for _ in range(args.big_mib):
            handle.write(block)
    with open(big_path, "rb") as handle:
        big = store.put_stream("big", handle).version.hash
    big_path.unlink()
    gateway_pids = [serve.pid] + [child.pid for child in psutil.Process(serve.pid).children()]
    nginx_rates, gateway_rates = [], []
    sampler = Sampler(gateway_pids)
    baseline = {pid: psutil.Process(pid).memory_info().rss for pid in gateway_pids}
    sampler.start()
    for _ in range(args.rounds):
        nginx_rates.append(download_rate(f"http://127.0.0.1:{nginx_port}/{big[:2]}/{big[2:]}", None, size))
        gateway_rates.append(download_rate(f"{gateway_url}/v1/objects/{big}", token, size))
    sampler.stop.set()
    sampler.join()
    nginx_speed, gateway_speed = statistics.median(nginx_rates), statistics.median(gateway_rates)
    print(f"== {args.big_mib} MiB GET with curl, {args.rounds} interleaved rounds (median)")
    print(f"  nginx                    {nginx_speed / 2**20:8.0f} MiB/s")
    print(f"  gateway + 2 workers      {gateway_speed / 2**20:8.0f} MiB/s")
    big_ratio = gateway_speed / nginx_speed
    print(f"  gateway / nginx = {big_ratio:.3f}x (goal >= 0.5x: {'met' if big_ratio >= 0.5 else 'MISSED'})")
    gateway_peak = sampler.peak[serve.pid] / 2**20
    print(f"  peak RSS: gateway {gateway_peak:.0f} MiB (before {baseline[serve.pid] / 2**20:.0f} MiB); workers "
          + ", ".join(f"{sampler.peak[pid] / 2**20:.0f} MiB (before {baseline[pid] / 2**20:.0f})" for pid in gateway_pids[1:]))


def put_benchmark(store_path, work, gateway_url, token, args, serve_pid: int) -> None:
    disk_rate = fsync_rate(store_path)
    script = work / "put.lua"
    script.write_text(PUT_LUA)
    ceiling = _no_fsync_server(work) if shutil.which("eatmydata") else None
    put_rates, ceiling_rates = [], []
    cpu = {"gateway": 0.0, "workers": 0.0}
    for _ in range(args.rounds):  # interleaved, so both see the same machine
        before = serve_cpu(serve_pid)
        put_rates.append(wrk(f"{gateway_url}/", args.seconds, 32, token, str(script)))
        after = serve_cpu(serve_pid)
        for part in cpu:
            cpu[part] += (after[part] - before[part]) / (put_rates[-1] * int(args.seconds))
        if ceiling is not None:
            ceiling_rates.append(wrk(f"{ceiling[0]}/", args.seconds, 32, ceiling[1], str(script)))
    if ceiling is not None:
        ceiling[2].send_signal(signal.SIGTERM)
        ceiling[2].wait(30)
    put_rate = statistics.median(put_rates)
    print(f"== durable 4 KiB PUTs through the gateway (2 workers), 32 concurrent clients, {args.rounds} runs (median)")
    print(f"  {put_rate:.0f} PUTs/s   runs: {', '.join(f'{v:.0f}' for v in put_rates)}")
    print(f"  disk: {disk_rate:.0f} fsyncs/s (4 KiB write + fsync in a loop, one thread, same file system)")
    gateway_ms, workers_ms = (cpu[part] / args.rounds * 1000 for part in ("gateway", "workers"))
    print(f"  CPU per PUT (user + system): gateway {gateway_ms:.2f} ms, workers {workers_ms:.2f} ms; "
          f"{os.cpu_count()} cores allow at most {os.cpu_count() * 1000 / (gateway_ms + workers_ms):.0f} PUTs/s at that cost")
    if ceiling_rates:
        rate = statistics.median(ceiling_rates)
        print(f"  the same server under eatmydata (every fsync a no-op: NOT durable, the CPU ceiling): {rate:.0f} PUTs/s"
              f"   runs: {', '.join(f'{v:.0f}' for v in ceiling_rates)}")
    else:
        print("  (install eatmydata to also see the ceiling with fsync switched off)")
    print(f"  goal >= 2,000 PUTs/s: {'met' if put_rate >= 2000 else 'MISSED'}")


def serve_cpu(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) so far of the serve process (the gateway) and of its children (the workers)."""
    tick = os.sysconf("SC_CLK_TCK")

    def stat(path: Path) -> list[str] | None:
        try:
            return path.read_text().rpartition(")")[2].split()  # after "(comm)": state, ppid, ...
        except OSError:
            return None

    def seconds(fields: list[str]) -> float:
        return (int(fields[11]) + int(fields[12])) / tick  # utime, stime

    totals = {"gateway": 0.0, "workers": 0.0}
    own = stat(Path(f"/proc/{pid}/stat"))
    if own is not None:
        totals["gateway"] = seconds(own)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = stat(entry / "stat")
            if fields is not None and fields[1] == str(pid):
                totals["workers"] += seconds(fields)
    return totals


def _no_fsync_server(work: Path) -> tuple[str, str, subprocess.Popen]:
    """A second serve, on its own store, with fsync turned into a no-op by eatmydata (LD_PRELOAD)."""
    store_path = work / "store-no-fsync"
    Store.init(store_path)[0].close()
    token = TokenStore(store_path).create("bench", "write")
    port = free_port()
    process = subprocess.Popen(["eatmydata", *IMSTORE, "--store", str(store_path), "serve", "--port", str(port), "--workers", "2"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    return f"http://127.0.0.1:{port}", token, process

if __name__ == "__main__":
    sys.exit(main())
