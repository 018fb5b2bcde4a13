"""Starts N worker processes on unix sockets in a private 0700 directory and restarts any that dies or hangs.

A worker's `id` (1..N) is its slot and survives restarts; its pid does not. The
gateway asks `pick()` for the next live worker (round robin) and reports a worker
that failed to answer with `suspect()`, which health-checks it at once.

Hung workers (D5): every worker is asked for its health twice per `grace` (a fifth of
the worker timeout, `IMSTORE_WORKER_TIMEOUT`, 10 s by default). The answer comes from
its event loop, which stays free while store calls run in its threads, so a worker
that cannot answer is stopped, stuck or swamped, not busy. One that has not answered
for `grace` gets no new requests (and /healthz stops saying ok); one that has not
answered for the whole timeout is killed, which ends its requests in flight (the
gateway retries what it may), frees any lock it held, and the watcher starts a new one.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass, field

from ..errors import Unavailable, UsageError
from .upstream import UpstreamError, UpstreamPool
from .worker import HEALTH_PATH

__all__ = ["Supervisor", "WorkerSlot", "worker_timeout_from_env", "WORKER_TIMEOUT_ENV", "DEFAULT_WORKER_TIMEOUT"]

READY_TIMEOUT = 30.0
MAX_BACKOFF = 2.0
WORKER_TIMEOUT_ENV = "IMSTORE_WORKER_TIMEOUT"
DEFAULT_WORKER_TIMEOUT = 10.0  # seconds a worker may go without answering before it is restarted


def worker_timeout_from_env() -> float:
    """IMSTORE_WORKER_TIMEOUT (seconds, > 0), else DEFAULT_WORKER_TIMEOUT."""
    text = os.environ.get(WORKER_TIMEOUT_ENV, "").strip()
    if not text:
        return DEFAULT_WORKER_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < 1e6:
        raise UsageError(f"{WORKER_TIMEOUT_ENV} is seconds, a number above 0, not {text!r:.40}")
    return value


@dataclass
class WorkerSlot:
    """One worker position: its process comes and goes, the slot stays."""

    id: int
    socket: str
    process: asyncio.subprocess.Process | None = None
    alive: bool = False
    requests: int = 0
    restarts: int = 0
    pool: UpstreamPool | None = None
    started: float = field(default=0.0)
    ready: bool = False  # its process has answered once (the heartbeat leaves a starting worker alone)
    answered: float = 0.0  # when it last answered a health check (monotonic)
    silent: bool = False  # taken out of rotation by the heartbeat (said once in the log)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def health(self) -> dict:
        return {"id": self.id, "pid": self.pid, "alive": self.alive, "requests": self.requests}


class Supervisor:
    """Owns the worker processes of one serve."""

    def __init__(self, store_root: str, count: int, *, shutdown_timeout: float = 10.0, env: dict[str, str] | None = None,
                 worker_timeout: float = DEFAULT_WORKER_TIMEOUT):  # fmt: skip
        self.store_root = store_root
        self.env = {**os.environ, **env} if env else None  # None: the workers inherit serve's environment
        self.shutdown_timeout = shutdown_timeout
        self.worker_timeout = worker_timeout
        self.grace = worker_timeout / 5  # unanswered this long: out of rotation
        self.runtime_dir = tempfile.mkdtemp(prefix="imstore-serve-")  # 0700 by construction
        os.chmod(self.runtime_dir, 0o700)
        self.slots = [WorkerSlot(number, os.path.join(self.runtime_dir, f"w{number}.sock")) for number in range(1, count + 1)]
        self.restarts = 0
        self._next = 0
        self._stopping = False
        self._watchers: list[asyncio.Task] = []

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Start every worker and return once each one answers (serve listens only then)."""
        await asyncio.gather(*(self._spawn(slot) for slot in self.slots))
        await asyncio.gather(*(self._wait_ready(slot, READY_TIMEOUT, first=True) for slot in self.slots))
        self._watchers = [asyncio.create_task(self._watch(slot)) for slot in self.slots]
        self._watchers += [asyncio.create_task(self._heartbeat(slot)) for slot in self.slots]

    async def stop(self) -> None:
        """SIGTERM every worker (they finish in-flight requests), SIGKILL what is left after the timeout."""
        self._stopping = True
        for task in self._watchers:
            task.cancel()
        for slot in self.slots:
            if slot.process is not None and slot.process.returncode is None:
                slot.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.shutdown_timeout + 2
        for slot in self.slots:
            if slot.process is None:
                continue
            try:
                await asyncio.wait_for(slot.process.wait(), max(0.1, deadline - time.monotonic()))
            except TimeoutError:
                slot.process.kill()
                await slot.process.wait()
            slot.alive = False
            if slot.pool is not None:
                slot.pool.close()
        shutil.rmtree(self.runtime_dir, ignore_errors=True)

    async def _spawn(self, slot: WorkerSlot) -> None:
        if slot.pool is not None:
            slot.pool.close()  # pooled connections to the old process are dead
        slot.pool = UpstreamPool(slot.socket, connect_wait=self.worker_timeout)
        slot.ready = False
        slot.silent = False
        slot.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "imstore.server.worker_process",
            "--store",
            self.store_root,
            "--socket",
            slot.socket,
            "--shutdown-timeout",
            str(self.shutdown_timeout),
            "--parent",
            str(os.getpid()),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C reaches serve only; serve stops the workers in order
            env=self.env,
        )
        slot.started = time.monotonic()

    async def _wait_ready(self, slot: WorkerSlot, timeout: float, *, first: bool = False) -> bool:
        deadline = time.monotonic() + timeout
        delay = 0.01
        while time.monotonic() < deadline:
            if slot.process is not None and slot.process.returncode is not None:
                if first:
                    raise Unavailable(f"worker {slot.id} exited at start (code {slot.process.returncode}); see the messages above")
                return False
            if await self.check(slot):
                slot.ready = True
                return True
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.2)
        if first:
            raise Unavailable(f"worker {slot.id} did not answer within {timeout:.0f} s")
        return False

    async def check(self, slot: WorkerSlot, timeout: float = 2.0) -> bool:
        """Ask the worker whether it is there (within timeout); mark it alive or not."""
        if slot.pool is None or slot.process is None or slot.process.returncode is not None:
            slot.alive = False
            return False
        try:
            async with asyncio.timeout(timeout):
                response = await slot.pool.request("GET", HEALTH_PATH, {})
                payload = json.loads(await response.read())
            slot.alive = response.status == 200 and payload.get("pid") == slot.pid
        except (UpstreamError, TimeoutError, ValueError, OSError):
            slot.alive = False
        if slot.alive:
            slot.answered = time.monotonic()
        return slot.alive

    async def _heartbeat(self, slot: WorkerSlot) -> None:
        """Ask a ready worker for its health twice per grace; route around it, then restart it, when it is silent."""
        while not self._stopping:
            await asyncio.sleep(self.grace / 2)
            process = slot.process
            if process is None or process.returncode is not None or not slot.ready:
                continue  # starting, or dead: the watcher has it
            if await self.check(slot, timeout=self.grace):
                if slot.silent:
                    slot.silent = False
                    print(f"imstore serve: worker {slot.id} (pid {slot.pid}) answers again", file=sys.stderr, flush=True)
                continue
            if process is not slot.process or process.returncode is not None:
                continue
            silent_for = time.monotonic() - slot.answered
            if silent_for >= self.worker_timeout:
                print(f"imstore serve: worker {slot.id} (pid {slot.pid}) has not answered for {silent_for:.1f} s"
                      f" (worker timeout {self.worker_timeout:g} s); killing it to start a new one",
                      file=sys.stderr, flush=True)  # fmt: skip
                slot.ready = False
                process.kill()  # the watcher restarts it
            elif not slot.silent:
                slot.silent = True
                print(f"imstore serve: worker {slot.id} (pid {slot.pid}) has not answered for {silent_for:.1f} s;"
                      " no new requests go to it", file=sys.stderr, flush=True)  # fmt: skip

    async def _watch(self, slot: WorkerSlot) -> None:
        """Restart the worker whenever it dies (backing off if it keeps dying at once)."""
        backoff = 0.05
        while not self._stopping:
            assert slot.process is not None
            code = await slot.process.wait()
            slot.alive = False
            _remove_quietly(f"{slot.socket}.{slot.pid}.lock")  # a killed worker could not remove its own
            if self._stopping:
                return
            lived = time.monotonic() - slot.started
            print(f"imstore serve: worker {slot.id} (pid {slot.pid}) exited with {code}; restarting", file=sys.stderr, flush=True)
            backoff = 0.05 if lived > 5 else min(backoff * 2, MAX_BACKOFF)
            await asyncio.sleep(backoff if lived <= 5 else 0)
            slot.restarts += 1
            self.restarts += 1
            await self._spawn(slot)
            if not await self._wait_ready(slot, READY_TIMEOUT) and slot.process.returncode is None:
                print(f"imstore serve: worker {slot.id} (pid {slot.pid}) did not answer within {READY_TIMEOUT:.0f} s of its start;"
                      " killing it to start a new one", file=sys.stderr, flush=True)  # fmt: skip
                slot.process.kill()

    # ------------------------------------------------------------ routing
    def pick(self, exclude: WorkerSlot | None = None, affinity: str | None = None) -> WorkerSlot | None:
        """The next live worker in round-robin order (not `exclude` if another is alive). With an affinity (an S3
        upload id), the same live worker each time: one upload's parts meet in one process, where their MD5s
        share the SIMD lanes (S3-27); the next live one when that worker is down."""
        count = len(self.slots)
        fallback = None
        start = zlib.crc32(affinity.encode()) if affinity is not None else self._next
        for step in range(count):
            slot = self.slots[(start + step) % count]
            if affinity is None:
                self._next += 1
            if slot.alive:
                if slot is exclude:
                    fallback = slot
                    continue
                return slot
        return fallback

    def suspect(self, slot: WorkerSlot) -> None:
        """A request to slot failed at the connection level: stop sending to it until it answers again."""
        slot.alive = False
        if not self._stopping:
            asyncio.get_running_loop().create_task(self._recheck(slot))

    async def _recheck(self, slot: WorkerSlot) -> None:
        process = slot.process
        if process is not None and process.returncode is None and not await self._wait_ready(slot, self.worker_timeout):
            if process is slot.process and process.returncode is None:
                process.kill()  # alive but not answering: the watcher restarts it

    async def wait_for_any(self, timeout: float) -> WorkerSlot | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            slot = self.pick()
            if slot is not None:
                return slot
            await asyncio.sleep(0.02)
        return None

    def health(self) -> dict:
        workers = [slot.health() for slot in self.slots]
        alive = sum(1 for slot in self.slots if slot.alive)
        status = "ok" if alive == len(self.slots) else ("degraded" if alive else "down")
        return {"status": status, "workers": workers}


def _remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
