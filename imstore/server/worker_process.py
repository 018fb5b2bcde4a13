"""The process of one imstore serve worker: its life (the owner lock, signals, dying with serve) and main().

The HTTP application it serves is worker.WorkerApp. Started by the supervisor as
`python -m imstore.server.worker_process` (bench_serve starts one on TCP).
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import os
import signal
import sys

from aiohttp import web

from ..cache import CacheSettings
from ..errors import ImstoreError
from . import run_event_loop
from .s3.multipart import expiry_from_env
from .s3.multipart_ops import expire_uploads_periodically
from .worker import LISTEN_BACKLOG, THREAD_MEMO_BYTES, WorkerApp


def _hold_owner_lock(path: str) -> int:
    """flock a file for this process's life: the ledger reads 'free' as 'this worker is dead'."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


async def serve_worker(
    store_root: str, socket_path: str, shutdown_timeout: float, tcp_port: int | None = None, parent: int | None = None
) -> None:
    owner_lock = f"{socket_path}.{os.getpid()}.lock"
    _hold_owner_lock(owner_lock)
    cache = CacheSettings.from_env()
    app = WorkerApp(store_root, owner_lock, cache=cache._replace(memo_bytes=THREAD_MEMO_BYTES) if cache.enabled else None)
    await app.call(app.store)  # fail early (and loudly) if the store cannot be opened
    server = web.Server(app.handle, access_log=None)
    runner = web.ServerRunner(server, handle_signals=False, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    if tcp_port is not None:  # benchmarks only: what a worker costs without the gateway (no auth!)
        site: web.BaseSite = web.TCPSite(runner, "127.0.0.1", tcp_port, backlog=1024)
        await site.start()
    else:
        if os.path.exists(socket_path):
            os.unlink(socket_path)
        site = web.UnixSite(runner, socket_path, backlog=LISTEN_BACKLOG)
        await site.start()
        os.chmod(socket_path, 0o600)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    orphan_watch = asyncio.create_task(_stop_when_orphaned(stop, parent))
    expiry = expiry_from_env()  # serve --s3-port: abandoned multipart uploads are removed (S3-11)
    sweeper = asyncio.create_task(expire_uploads_periodically(app, expiry)) if expiry is not None else None
    await stop.wait()
    orphan_watch.cancel()
    if sweeper is not None:
        sweeper.cancel()
    await runner.cleanup()
    for leftover in (owner_lock, socket_path if tcp_port is None else None):
        try:
            if leftover:
                os.unlink(leftover)
        except OSError:
            pass
    try:
        os.rmdir(os.path.dirname(socket_path))  # the last worker out removes serve's private directory
    except OSError:
        pass


def _die_with_parent(parent: int | None) -> None:
    """A worker lives in its own session: make sure it does not outlive a serve that was killed."""
    if parent is None:
        return
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: SIGTERM when serve dies
    except (OSError, AttributeError):
        pass  # not Linux: _stop_when_orphaned still notices within a second
    if os.getppid() != parent:  # serve died before we got here
        sys.exit(0)


async def _stop_when_orphaned(stop: asyncio.Event, parent: int | None) -> None:
    """Belt and braces for PR_SET_PDEATHSIG: stop when serve is no longer our parent."""
    if parent is None:
        return
    while not stop.is_set():
        if os.getppid() != parent:
            print(f"imstore worker {os.getpid()}: serve is gone; stopping", file=sys.stderr, flush=True)
            stop.set()
            return
        await asyncio.sleep(1.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="imstore-worker", description="An imstore serve worker (started by the supervisor).")
    parser.add_argument("--store", required=True)
    parser.add_argument("--socket", required=True)
    parser.add_argument("--shutdown-timeout", type=float, default=10.0)
    parser.add_argument("--parent", type=int, help="the supervisor's pid: the worker stops when it dies")
    parser.add_argument("--tcp-port", type=int, help="benchmarks only: listen on 127.0.0.1:PORT (no auth) instead of the socket")
    args = parser.parse_args(argv)
    _die_with_parent(args.parent)
    try:
        run_event_loop(serve_worker(args.store, args.socket, args.shutdown_timeout, args.tcp_port, args.parent))
    except ImstoreError as exc:
        print(f"imstore worker: error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
