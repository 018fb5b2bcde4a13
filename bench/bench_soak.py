"""Soak (issue 11): minutes of mixed HTTP load on a real `imstore serve` while its workers are stopped and killed.

One asyncio process runs --clients concurrent clients (aiohttp) against `imstore serve` on
127.0.0.1 with --workers workers. Each client loops over a random mix of: PUT (random bytes,
mostly 1-16 KiB, some 256 KiB-2 MiB; half with an Idempotency-Key, retried with the same key
after a connection error, 503 or 409 and then checked to have made exactly one version), GET
by key (latest) and by key + version, GET /v1/objects/HASH, GET /v1/history/KEY, and now and
then (4% of operations) a small POST /v1/import (JSON lines or a tar) of fresh keys.

Faults, in every minute (a shorter run scales the schedule to its length): at 10% of the
minute one worker is SIGSTOPped for a third of the minute, then SIGCONTed; at 60% another
worker is killed with SIGKILL and the supervisor must bring it back. The gateway is never
killed: nothing restarts a killed `imstore serve` (it is the workers' supervisor and has
none of its own; its workers stop with it), so killing it would only end the run.

Only 2xx answers to writes are acknowledged writes. Counted per minute:
- lost: an acknowledged write whose version is later missing or names other bytes;
- wrong: a GET whose bytes do not hash (BLAKE3) to what was acknowledged for that key/version
  (or, for a latest GET of a version we did not see acknowledged, to its own ETag);
- 5xx by status (503s with and without Retry-After), connection errors, completed requests
  (answered below 500), their p99 and max latency, and the workers' open file count.
At the end every acknowledged write is read back by key + version (within a time limit),
every key's history is checked for duplicate versions, serve is stopped, `imstore verify` runs
on the store, and writes found lost or not read back are looked for in the store on disk.
Exit status 1 if a goal is missed: anything lost or wrong, a duplicate version, a minute with
0 completed requests, an acknowledged write not read back, or a failed verify.
--nofile N lowers serve's open-files limit (to reach that limit sooner).

Example: .venv/bin/python bench/bench_soak.py --minutes 10
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import functools
import io
import itertools
import json
import math
import os
import random
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from _common import imstore_command, load_note
from multidict import CIMultiDict
from yarl import URL

from imstore import Store
from imstore.errors import ImstoreError
from imstore.hashing import hash_bytes
from imstore.server.auth import TokenStore
from imstore.server.protocol import key_path, object_id_of_etag

KEYS = 256  # shared by all clients, so their writes to one key interleave
OPS = {"put": 36, "get_version": 26, "get_latest": 14, "history": 12, "get_object": 8, "import": 4}  # relative weights
RETRYABLE = {409, 502, 503}  # 409: the same Idempotency-Key is still in progress (its worker may be stopped)
MAX_ATTEMPTS = 40  # of one idempotent write
RETRY_WINDOW = 90.0  # seconds one idempotent write keeps retrying
MAX_OPS_PER_CLIENT = 5_000_000
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=120, sock_connect=10)  # a stopped worker holds requests ~20 s
VERIFY_CONCURRENCY = 16
MIN_READ_BACK_SECONDS = 300.0  # the read-back may take as long as the run, and at least this


@dataclass
class Reply:
    status: int
    headers: CIMultiDict
    body: bytes


@dataclass
class Write:
    """An acknowledged write: what the server said it stored for key/version."""

    key: str
    version: int
    hash: str
    size: int


@dataclass
class Row:
    """What happened in one minute (a request is counted in the minute it ended)."""

    acked: int = 0
    lost: int = 0
    wrong: int = 0
    completed: int = 0
    conn_errors: int = 0
    status_5xx: Counter = field(default_factory=Counter)
    retry_after: Counter = field(default_factory=Counter)  # 503s: "with" / "without" a Retry-After header
    latencies: list[float] = field(default_factory=list)
    faults: list[str] = field(default_factory=list)
    worker_fds: int | None = None  # the most open files of any worker at the minute's end

    def max_ms(self) -> float:
        return max(self.latencies, default=0.0) * 1000

    def p99_ms(self) -> float:
        if not self.latencies:
            return 0.0
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)] * 1000

    def as_json(self) -> dict:
        return {
            "acked": self.acked, "lost": self.lost, "wrong": self.wrong, "completed": self.completed,
            "conn_errors": self.conn_errors, "status_5xx": {str(k): v for k, v in sorted(self.status_5xx.items())},
            "503_with_retry_after": self.retry_after["with"], "503_without_retry_after": self.retry_after["without"],
            "p99_ms": round(self.p99_ms(), 1), "max_ms": round(self.max_ms(), 1), "worker_fds": self.worker_fds,
            "faults": self.faults,
        }  # fmt: skip


class Soak:
    def __init__(self, url: str, token: str, args, say):
        self.url = url
        self.token = token
        self.args = args
        self.say = say
        self.seconds = args.minutes * 60
        self.rows = [Row() for _ in range(max(1, math.ceil(args.minutes)))]
        self.final = Row()  # the read-back after the run
        self.in_run = True
        self.acked: dict[tuple[str, int], Write] = {}
        self.writes: list[Write] = []  # the same, for random picks
        self.max_acked: dict[str, int] = {}  # key -> highest version acknowledged so far
        self.lost: set[tuple[str, int]] = set()
        self.duplicates: set[tuple[str, str]] = set()  # (key, hash) found in more than one version
        self.import_numbers = itertools.count(1)
        self.unread: list[Write] = []  # acknowledged writes the read-back got no 2xx/4xx answer for
        self.serve_pid = 0  # for the workers' open file count
        self.problems: list[str] = []
        self.counts: Counter = Counter()  # operations, retries, imports, stale reads, other statuses...
        self.restart_seconds: list[float] = []
        self.session: aiohttp.ClientSession | None = None
        self.started = 0.0

    # ------------------------------------------------------------ bookkeeping
    def now(self) -> float:
        return time.monotonic() - self.started

    def row(self) -> Row:
        if not self.in_run:
            return self.final
        return self.rows[min(int(self.now() // 60), len(self.rows) - 1)]  # the drain after the end counts in the last

    def problem(self, text: str) -> None:
        self.problems.append(f"[{self.now():7.1f}s] {text}")
        if len(self.problems) <= 20:
            self.say(f"  PROBLEM {self.problems[-1]}")

    def acknowledge(self, key: str, version: int, digest: str, size: int, answered: str | None) -> None:
        if answered is not None and answered != digest:
            self.problem(f"PUT {key} acknowledged v{version} with hash {answered[:12]}, not the {digest[:12]} sent")
            self.lose(Write(key, version, digest, size), "acknowledged with another hash")
        known = self.acked.get((key, version))
        if known is not None:
            if known.hash != digest:  # one version number given to two different writes
                self.problem(f"{key} v{version} acknowledged for two contents ({known.hash[:12]}, {digest[:12]})")
                self.lose(known, "version acknowledged twice")
            return  # a replayed answer to the same write
        write = Write(key, version, digest, size)
        self.acked[(key, version)] = write
        self.writes.append(write)
        self.max_acked[key] = max(version, self.max_acked.get(key, 0))
        self.row().acked += 1

    def lose(self, write: Write, why: str) -> None:
        if (write.key, write.version) not in self.lost:
            self.lost.add((write.key, write.version))
            self.row().lost += 1
            self.problem(f"LOST {write.key} v{write.version} ({write.hash[:12]}, {write.size} B): {why}")

    def duplicate(self, key: str, digest: str, copies: int) -> None:
        if (key, digest) not in self.duplicates:
            self.duplicates.add((key, digest))
            self.problem(f"DUPLICATE {key} holds {digest[:12]} in {copies} versions (one write, sent again with its Idempotency-Key)")

    def wrong(self, what: str) -> None:
        self.row().wrong += 1
        self.problem(f"WRONG {what}")

    # ------------------------------------------------------------ HTTP
    async def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None) -> Reply | None:
        """One request; None after a connection error or timeout (counted, never an acknowledgement)."""
        assert self.session is not None
        all_headers = {"Authorization": f"Bearer {self.token}", **(headers or {})}
        started = time.monotonic()
        try:
            async with self.session.request(method, URL(self.url + path, encoded=True), data=body, headers=all_headers) as response:
                reply = Reply(response.status, response.headers.copy(), await response.read())  # names stay case-insensitive
        except (aiohttp.ClientError, TimeoutError) as exc:
            row = self.row()
            row.conn_errors += 1
            self.counts[f"connection error: {type(exc).__name__}"] += 1
            return None
        row = self.row()
        if reply.status >= 500:
            row.status_5xx[reply.status] += 1
            self.counts[f"{reply.status} on {method} {route_of(path)}"] += 1
            if reply.status == 503:
                row.retry_after["with" if "Retry-After" in reply.headers else "without"] += 1
        else:
            row.completed += 1
            row.latencies.append(time.monotonic() - started)
        return reply

    async def write_with_retries(self, method: str, path: str, body: bytes, headers: dict) -> tuple[Reply | None, int]:
        """An idempotent write, sent again with the same key until it gets a final answer; (reply, attempts)."""
        give_up = time.monotonic() + RETRY_WINDOW
        reply = None
        for attempt in range(1, MAX_ATTEMPTS + 1):
            reply = await self.request(method, path, body, headers)
            if reply is not None and reply.status not in RETRYABLE:
                return reply, attempt
            if time.monotonic() > give_up:
                break
            self.counts["idempotent retries"] += 1
            await asyncio.sleep(retry_delay(reply, attempt))  # back off between attempts (what a polite client does)
        return reply, MAX_ATTEMPTS

    # ------------------------------------------------------------ operations
    async def client(self, number: int) -> None:
        rng = random.Random(f"{self.args.seed}-{number}")
        names, weights = list(OPS), list(OPS.values())
        for _ in range(MAX_OPS_PER_CLIENT):
            if self.now() >= self.seconds:
                return
            name = rng.choices(names, weights)[0]
            self.counts[name] += 1
            await getattr(self, f"op_{name}")(rng, number)

    async def op_put(self, rng: random.Random, number: int) -> None:
        key = f"soak/k{rng.randrange(KEYS):03d}"
        data = rng.randbytes(body_size(rng))
        digest = hash_bytes(data)
        path = key_path("/v1/keys/", key)
        if rng.random() < 0.5:
            reply = await self.request("PUT", path, data)
            if reply is not None and reply.status in (200, 201):
                document = json.loads(reply.body)
                self.acknowledge(key, document["version"], digest, len(data), document.get("hash"))
            elif reply is not None and reply.status < 500:
                self.counts[f"PUT answered {reply.status}"] += 1
            return
        reply, attempts = await self.write_with_retries("PUT", path, data, {"Idempotency-Key": f"soak-{rng.getrandbits(96):024x}"})
        if reply is None or reply.status not in (200, 201):
            self.counts["idempotent PUTs not acknowledged"] += 1
            return
        document = json.loads(reply.body)
        self.acknowledge(key, document["version"], digest, len(data), document.get("hash"))
        if attempts > 1:  # the retries must have made exactly one version of these bytes
            self.counts["retried PUTs checked for one version"] += 1
            await self.check_one_version(key, digest)

    async def check_one_version(self, key: str, digest: str) -> None:
        for _ in range(5):
            reply = await self.request("GET", key_path("/v1/history/", key))
            if reply is not None and reply.status == 200:
                copies = sum(1 for entry in json.loads(reply.body) if entry.get("hash") == digest)
                if copies > 1:
                    self.duplicate(key, digest, copies)
                return  # none at all: the read-back finds the loss

    async def op_get_version(self, rng: random.Random, number: int) -> None:
        if not self.writes:
            return
        write = rng.choice(self.writes)
        reply = await self.request("GET", key_path("/v1/keys/", write.key) + f"?version={write.version}")
        self.check_read(write, reply, f"GET {write.key}?version={write.version}")

    async def op_get_object(self, rng: random.Random, number: int) -> None:
        if not self.writes:
            return
        write = rng.choice(self.writes)
        reply = await self.request("GET", f"/v1/objects/{write.hash}")
        self.check_read(write, reply, f"GET /v1/objects/{write.hash[:12]}")

    def check_read(self, write: Write, reply: Reply | None, what: str) -> None:
        if reply is None or reply.status >= 500:
            return
        if reply.status == 404:
            self.lose(write, f"{what} answered 404")
        elif reply.status != 200:
            self.counts[f"read answered {reply.status}"] += 1
        elif hash_bytes(reply.body) != write.hash:
            self.wrong(f"{what} gave {len(reply.body)} B hashing to {hash_bytes(reply.body)[:12]}, not {write.hash[:12]}")
            if object_id_of_etag(reply.headers.get("ETag", "")) != write.hash:
                self.lose(write, f"{what} names other bytes (ETag {reply.headers.get('ETag')})")

    async def op_get_latest(self, rng: random.Random, number: int) -> None:
        key = f"soak/k{rng.randrange(KEYS):03d}"
        floor = self.max_acked.get(key, 0)  # acknowledged before this GET was sent: latest can be no older
        reply = await self.request("GET", key_path("/v1/keys/", key))
        if reply is None or reply.status >= 500:
            return
        if reply.status == 404:
            if floor:  # a real loss would show in the read-back too
                self.counts["stale latest reads"] += 1
                self.problem(f"GET {key} (latest) answered 404 after v{floor} was acknowledged")
            return
        if reply.status != 200:
            self.counts[f"read answered {reply.status}"] += 1
            return
        version = int(reply.headers.get("X-Imstore-Version", "0"))
        digest = hash_bytes(reply.body)
        expected = self.acked.get((key, version))
        wanted = expected.hash if expected is not None else object_id_of_etag(reply.headers.get("ETag", ""))
        if not wanted:
            self.counts["latest reads without an ETag"] += 1
        elif digest != wanted:
            self.wrong(f"GET {key} (latest, v{version}) gave bytes hashing to {digest[:12]}, not {wanted[:12]}")
        if version < floor:
            self.counts["stale latest reads"] += 1
            self.problem(f"GET {key} (latest) gave v{version} after v{floor} was acknowledged")

    async def op_history(self, rng: random.Random, number: int) -> None:
        key = f"soak/k{rng.randrange(KEYS):03d}"
        reply = await self.request("GET", key_path("/v1/history/", key) + "?limit=50")
        if reply is None or reply.status != 200:
            return
        for entry in json.loads(reply.body):
            write = self.acked.get((key, entry.get("version")))
            if write is not None and entry.get("hash") != write.hash:
                self.lose(write, f"history names {str(entry.get('hash'))[:12]} for it")

    async def op_import(self, rng: random.Random, number: int) -> None:
        """A few fresh keys in one POST /v1/import (atomic): each is version 1 of its key once acknowledged."""
        prefix = f"soak/imp/{number}-{next(self.import_numbers)}/"
        items = [(f"f{index}", rng.randbytes(rng.randint(1 << 10, 16 << 10))) for index in range(rng.randint(2, 6))]
        if rng.random() < 0.5:
            body = b"".join(json.dumps({"key": name, "content_b64": base64.b64encode(data).decode()}).encode() + b"\n"
                            for name, data in items)  # fmt: skip
            content_type = "application/x-ndjson"
        else:
            body, content_type = tar_of(items), "application/x-tar"
        headers = {"Idempotency-Key": f"soak-imp-{rng.getrandbits(96):024x}", "Content-Type": content_type}
        reply, _attempts = await self.write_with_retries("POST", "/v1/import?prefix=" + prefix.replace("/", "%2F"), body, headers)
        if reply is None or reply.status not in (200, 201):
            self.counts["imports not acknowledged" if reply is None or reply.status >= 500 else f"import answered {reply.status}"] += 1
            return
        self.counts["imports acknowledged"] += 1
        for name, data in items:
            self.acknowledge(prefix + name, 1, hash_bytes(data), len(data), None)

    # ------------------------------------------------------------ faults
    async def health(self) -> dict | None:
        reply = await self.request("GET", "/healthz")
        return json.loads(reply.body) if reply is not None and reply.status in (200, 503) else None

    async def live_pid(self, slot: int, timeout: float = 60) -> int | None:
        """The pid of worker `slot` once the gateway counts it alive (polled, bounded)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            health = await self.health()
            for worker in (health or {}).get("workers", []):
                if worker["id"] == slot and worker["alive"]:
                    return worker["pid"]
            await asyncio.sleep(0.05)
        return None

    async def faults(self) -> None:
        cycle = min(60.0, self.seconds)
        workers = self.args.workers
        for minute in range(len(self.rows)):
            base = minute * 60.0
            stop_at, cont_at, kill_at = base + 0.1 * cycle, base + 0.1 * cycle + cycle / 3, base + 0.6 * cycle
            stop_slot, kill_slot = minute % workers + 1, (minute + 1) % workers + 1
            if stop_at >= self.seconds:
                return
            await self.until(stop_at)
            await self.stop_worker(stop_slot, cont_at)
            if kill_at >= self.seconds:
                return
            await self.until(kill_at)
            await self.kill_worker(kill_slot)

    async def until(self, moment: float) -> None:
        await asyncio.sleep(max(0.0, moment - self.now()))  # the fault schedule itself, not a wait for a condition

    async def stop_worker(self, slot: int, cont_at: float) -> None:
        pid = await self.live_pid(slot)
        if pid is None:
            self.fault(f"worker {slot} not alive: no SIGSTOP")
            return
        started = self.now()
        os.kill(pid, signal.SIGSTOP)
        try:
            await self.until(cont_at)
        finally:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:  # the gateway found it unresponsive and had it killed and restarted
                self.counts["stopped workers replaced by the supervisor"] += 1
        self.fault(f"STOP w{slot} {started:.0f}-{self.now():.0f}s")

    async def kill_worker(self, slot: int) -> None:
        pid = await self.live_pid(slot)
        if pid is None:
            self.fault(f"worker {slot} not alive: no SIGKILL")
            return
        killed = time.monotonic()
        at = self.now()
        os.kill(pid, signal.SIGKILL)
        deadline = killed + 60
        while time.monotonic() < deadline:
            new = await self.live_pid(slot, timeout=max(0.1, deadline - time.monotonic()))
            if new is not None and new != pid:
                self.restart_seconds.append(time.monotonic() - killed)
                self.fault(f"KILL w{slot} {at:.0f}s (back {self.restart_seconds[-1]:.1f}s)")
                return
            await asyncio.sleep(0.05)
        self.fault(f"KILL w{slot} {at:.0f}s (NOT back within 60 s)")
        self.problem(f"worker {slot} was not restarted within 60 s of SIGKILL")

    def fault(self, text: str) -> None:
        self.row().faults.append(text)
        self.say(f"  [{self.now():6.1f}s] {text}")

    # ------------------------------------------------------------ the run
    async def reporter(self) -> None:
        """Print each minute's row once the minute is over (its requests are all counted by then)."""
        for minute in range(len(self.rows) - 1):
            await self.until((minute + 1) * 60.0)
            self.rows[minute].worker_fds = worker_fds(self.serve_pid)
            self.say(format_row(minute + 1, self.rows[minute]))

    async def run(self) -> None:
        connector = aiohttp.TCPConnector(limit=self.args.clients + 8)
        async with aiohttp.ClientSession(connector=connector, timeout=REQUEST_TIMEOUT, auto_decompress=False,
                                         skip_auto_headers=("Content-Type",)) as self.session:  # fmt: skip
            self.started = time.monotonic()
            self.say(HEADER)
            reporter = asyncio.create_task(self.reporter())
            faults = asyncio.create_task(self.faults())
            await asyncio.gather(*(self.client(number) for number in range(self.args.clients)))
            await faults  # ends by the deadline (a SIGCONT is always sent)
            reporter.cancel()
            self.rows[-1].worker_fds = worker_fds(self.serve_pid)
            self.say(format_row(len(self.rows), self.rows[-1]))
            self.in_run = False
            await self.read_back()
            await self.check_histories()

    async def read_back(self) -> None:
        """Every acknowledged write, by key + version, VERIFY_CONCURRENCY at a time, within a time limit."""
        queue = list(self.writes)
        give_up = time.monotonic() + max(MIN_READ_BACK_SECONDS, self.seconds)

        async def reader() -> None:
            while queue and time.monotonic() < give_up:
                write = queue.pop()
                for attempt in range(1, 6):  # the server is quiet now, but ride out a late restart (503, cut connection)
                    reply = await self.request("GET", key_path("/v1/keys/", write.key) + f"?version={write.version}")
                    if reply is not None and reply.status != 503:
                        break
                    await asyncio.sleep(retry_delay(reply, attempt))
                if reply is None or reply.status >= 500:
                    self.counts["read-back unanswered" if reply is None else f"read-back answered {reply.status}"] += 1
                    self.unread.append(write)
                else:
                    self.counts["read-back answered"] += 1
                    self.check_read(write, reply, f"read-back {write.key}?version={write.version}")

        await asyncio.gather(*(reader() for _ in range(VERIFY_CONCURRENCY)))
        if queue:
            self.problem(f"read-back stopped at its time limit with {len(queue)} writes left")
            self.unread.extend(queue)

    async def check_histories(self) -> None:
        """No key may hold the same (random, never re-sent) bytes twice: that would be a duplicated write."""
        for number in range(KEYS):
            key = f"soak/k{number:03d}"
            reply = await self.request("GET", key_path("/v1/history/", key))
            if reply is None or reply.status != 200:
                continue
            counts = Counter(entry.get("hash") for entry in json.loads(reply.body))
            for digest, copies in counts.items():
                if copies > 1:
                    self.duplicate(key, digest, copies)


def route_of(path: str) -> str:
    """'/v1/keys/soak%2Fk001?version=3' -> 'keys' (the route, for counting errors by route)."""
    parts = path.partition("?")[0].split("/")
    return parts[2] if len(parts) > 2 and parts[1] == "v1" else path


def retry_delay(reply: Reply | None, attempt: int) -> float:
    if reply is not None and reply.headers.get("Retry-After", "").isdigit():
        return min(float(reply.headers["Retry-After"]), 5.0)
    return min(0.1 * attempt, 1.0)


def body_size(rng: random.Random) -> int:
    if rng.random() < 0.05:
        return rng.randint(256 << 10, 2 << 20)
    return rng.randint(1 << 10, 16 << 10)


def tar_of(items: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, data in items:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


HEADER = (f"{'minute':>6} {'acked':>7} {'lost':>5} {'wrong':>5} {'completed':>9} {'conn err':>8} {'5xx':>14} {'503 no R-A':>10}"
          f" {'p99 ms':>8} {'max ms':>8} {'fds':>6}  faults")


def format_row(label, row: Row) -> str:
    errors = " ".join(f"{status}:{count}" for status, count in sorted(row.status_5xx.items())) or "-"
    return (f"{label!s:>6} {row.acked:7d} {row.lost:5d} {row.wrong:5d} {row.completed:9d} {row.conn_errors:8d} {errors:>14}"
            f" {row.retry_after['without']:10d} {row.p99_ms():8.0f} {row.max_ms():8.0f} {row.worker_fds or '-':>6}"
            f"  {'; '.join(row.faults)}")  # fmt: skip


def worker_fds(serve_pid: int) -> int | None:
    """The most open file descriptors of any of serve's children (the workers), from /proc; None elsewhere."""
    try:
        children = Path(f"/proc/{serve_pid}/task/{serve_pid}/children").read_text().split()
        return max((len(os.listdir(f"/proc/{child}/fd")) for child in children), default=None)
    except OSError:
        return None


# ============================================================ the server
def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_healthy(port: int, process: subprocess.Popen, timeout: float = 60) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"imstore serve exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as reply:
                if json.loads(reply.read())["status"] == "ok":
                    return
        except (OSError, ValueError):
            pass  # not listening yet
        time.sleep(0.05)
    raise RuntimeError(f"imstore serve not healthy within {timeout:.0f} s")


def stop_server(process: subprocess.Popen) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        return process.wait(60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return -9


def run_verify(store: Path) -> tuple[bool, str]:
    """`imstore verify` on the store (serve stopped): (clean, its summary)."""
    completed = subprocess.run([*imstore_command(), "--store", str(store), "--no-cache", "--json", "verify"],
                               capture_output=True, text=True, timeout=1800)  # fmt: skip
    try:
        report = json.loads(completed.stdout)
        summary = ", ".join(f"{name} {value}" for name, value in report.items() if not isinstance(value, list | dict))
        problems = report.get("problems") or []
    except ValueError:
        summary, problems = completed.stdout.strip()[-300:], []
    detail = f"exit {completed.returncode}: {summary}" + (f"; problems: {problems[:3]}" if problems else "")
    return completed.returncode == 0, detail + (f" {completed.stderr.strip()[-300:]}" if completed.returncode else "")


# ============================================================ main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10, help="length of the load (0.5 = 30 s, the smoke test)")
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients")
    parser.add_argument("--workers", type=int, default=2, help="serve's worker processes")
    parser.add_argument("--seed", type=int, default=11, help="seed of the clients' choices and bytes")
    parser.add_argument("--json", action="store_true", help="print a JSON summary on stdout (the report goes to stderr)")
    parser.add_argument("--dir", help="where to make the store [default: a temp dir under /tmp]")
    parser.add_argument("--keep", action="store_true", help="keep the store and serve's log (kept anyway when a goal is missed)")
    parser.add_argument("--nofile", type=int, help="limit serve and its workers to this many open files (default: inherited)")
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.clients < 1 or args.workers < 1:
        parser.error("--minutes, --clients and --workers must be positive")

    def say(text: str) -> None:
        print(text, file=sys.stderr if args.json else sys.stdout, flush=True)

    say(f"== soak: {args.minutes:g} min, {args.clients} clients, {args.workers} workers, seed {args.seed}")
    say(load_note())
    say("faults per minute: SIGSTOP one worker for 1/3 of the minute, then SIGKILL another. The gateway is never killed:"
        " nothing restarts a killed `imstore serve` (it supervises the workers; nothing supervises it).")  # fmt: skip
    work = Path(tempfile.mkdtemp(prefix="imstore-soak-", dir=args.dir))
    store = work / "store"
    Store.init(store)[0].close()
    token = TokenStore(store).create("soak", "write")
    port = free_port()
    log_path = work / "serve.log"
    limit = None if args.nofile is None else functools.partial(limit_open_files, args.nofile)
    with open(log_path, "wb") as log:  # a private read cache: other runs on the machine do not share it
        serve = subprocess.Popen([*imstore_command(), "--store", str(store), "--cache-dir", str(work / "cache"), "serve",
                                  "--port", str(port), "--workers", str(args.workers)], stdout=log, stderr=log,
                                 preexec_fn=limit)  # fmt: skip
    soak = Soak(f"http://127.0.0.1:{port}", token, args, say)
    soak.serve_pid = serve.pid
    started = time.monotonic()
    try:
        wait_healthy(port, serve)
        asyncio.run(soak.run())
    except BaseException:
        say(f"interrupted; the store and serve's log are in {work}")
        raise
    finally:
        code = stop_server(serve)
    run_seconds = time.monotonic() - started
    clean, verify_detail = run_verify(store)
    tracebacks = log_path.read_text("utf-8", "replace").count("Traceback")
    summary = summarise(soak, args, code, clean, verify_detail, tracebacks, run_seconds)
    summary["lost_but_on_disk"] = on_disk(store, [soak.acked[found] for found in soak.lost if found in soak.acked])
    summary["not_read_back_but_on_disk"] = on_disk(store, soak.unread)
    say(load_note())
    failed = report(summary, say)
    if args.json:
        print(json.dumps(summary, indent=1))
    if failed or args.keep:
        say(f"store and serve's log kept in {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


def limit_open_files(count: int) -> None:
    """In the child before exec: a lower soft RLIMIT_NOFILE (the workers inherit it)."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (count if hard == resource.RLIM_INFINITY else min(count, hard), hard))


def on_disk(store: Path, writes: list[Write]) -> int:
    """How many of these writes a local read finds intact (serve stopped): a lost write that is still on disk
    was refused by the server, not destroyed."""
    intact = 0
    with Store.open(store) as local:
        for write in writes:
            try:
                _found, reader = local.open_version(write.key, write.version)
                intact += hash_bytes(reader.read()) == write.hash
            except ImstoreError:
                pass
    return intact


def summarise(soak: Soak, args, serve_code: int, clean: bool, verify_detail: str, tracebacks: int, seconds: float) -> dict:
    rows = soak.rows
    everything = [*rows, soak.final]
    status_5xx = sum((row.status_5xx for row in everything), Counter())
    latencies = [value for row in rows for value in row.latencies]
    return {
        "minutes": args.minutes, "clients": args.clients, "workers": args.workers, "seed": args.seed,
        "per_minute": [row.as_json() for row in rows],
        "read_back": soak.final.as_json(),
        "acked": sum(row.acked for row in rows),
        "lost": len(soak.lost),
        "wrong": sum(row.wrong for row in everything),
        "completed": sum(row.completed for row in rows),
        "minutes_with_0_completed": sum(1 for row in rows if row.completed == 0),
        "conn_errors": sum(row.conn_errors for row in rows),
        "status_5xx": {str(k): v for k, v in sorted(status_5xx.items())},
        "503_with_retry_after": sum(row.retry_after["with"] for row in everything),
        "503_without_retry_after": sum(row.retry_after["without"] for row in everything),
        "p99_ms": round(Row(latencies=latencies).p99_ms(), 1),
        "duplicate_versions": len(soak.duplicates),
        "not_read_back": len(soak.unread),
        "stale_latest_reads": soak.counts["stale latest reads"],
        "worker_restart_seconds": [round(value, 2) for value in soak.restart_seconds],
        "counts": dict(sorted(soak.counts.items())),
        "problems": soak.problems[:50],
        "serve_exit": serve_code,
        "serve_tracebacks": tracebacks,
        "verify_clean": clean,
        "verify": verify_detail,
        "seconds": round(seconds, 1),
    }  # fmt: skip


def report(summary: dict, say) -> bool:
    """Print the totals and the goal lines; True if a goal was missed."""
    say("== totals")
    say(f"  acknowledged writes {summary['acked']}, completed requests {summary['completed']}, "
        f"connection errors {summary['conn_errors']}, 5xx {summary['status_5xx'] or 0}, p99 {summary['p99_ms']:.0f} ms")  # fmt: skip
    say(f"  503s with Retry-After {summary['503_with_retry_after']}, without {summary['503_without_retry_after']}")
    say(f"  worker restarts after SIGKILL: {summary['worker_restart_seconds']} s; serve exit {summary['serve_exit']};"
        f" tracebacks in serve's log {summary['serve_tracebacks']}")
    read_back = summary["read_back"]
    say(f"  read-back of every acknowledged write by key + version: {summary['counts'].get('read-back answered', 0)} answered,"
        f" lost {read_back['lost']},"
        f" wrong {read_back['wrong']}, not read back (5xx or no answer) {summary['not_read_back']}")  # fmt: skip
    if summary["lost"] or summary["not_read_back"]:
        say(f"  a local read of the store after serve stopped finds intact {summary['lost_but_on_disk']} of the {summary['lost']}"
            f" lost writes and {summary['not_read_back_but_on_disk']} of the {summary['not_read_back']} not read back")
    say(f"  stale latest reads {summary['stale_latest_reads']}; imstore verify: {summary['verify']}")
    say("  operations: " + ", ".join(f"{name} {count}" for name, count in summary["counts"].items()))
    goals = [
        ("0 lost", summary["lost"] == 0, summary["lost"]),
        ("0 wrong", summary["wrong"] == 0, summary["wrong"]),
        ("no minute with 0 completed requests", summary["minutes_with_0_completed"] == 0, summary["minutes_with_0_completed"]),
        ("0 duplicate versions from retried idempotent writes", summary["duplicate_versions"] == 0, summary["duplicate_versions"]),
        ("every acknowledged write read back", summary["not_read_back"] == 0, summary["not_read_back"]),
        ("imstore verify clean", summary["verify_clean"], summary["verify"].split(":")[0]),
    ]  # fmt: skip
    for label, met, value in goals:
        say(f"  goal {label}: {'met' if met else 'MISSED'} ({value})")
    return not all(met for _label, met, _value in goals)


if __name__ == "__main__":
    sys.exit(main())
