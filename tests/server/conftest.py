"""Real `imstore serve` subprocesses on 127.0.0.1 with a free port, and a small HTTP helper."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import pytest

from imstore import Store
from imstore.server.auth import TokenStore

IMSTORE = [sys.executable, "-m", "imstore"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self):
        return json.loads(self.body)


@dataclass
class Server:
    """One running `imstore serve`; stop() sends SIGTERM and returns the exit code."""

    store: Path
    port: int
    process: subprocess.Popen
    log_path: Path
    write_token: str
    read_token: str
    extra: dict = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text("utf-8", "replace")

    @property
    def replicate_token(self) -> str:
        """A token of the replicate scope (the replication feed's), made on first use."""
        if "replicate_token" not in self.extra:
            self.extra["replicate_token"] = TokenStore(self.store).create(f"replicate{self.port}", "replicate")
        return self.extra["replicate_token"]

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None, token: str | None = "write",
                timeout: float = 30) -> Reply:
        """One request; token is 'write', 'read', 'replicate', None (no header) or a literal Authorization value via headers."""
        all_headers = dict(headers or {})
        if token == "write":
            all_headers.setdefault("Authorization", f"Bearer {self.write_token}")
        elif token == "read":
            all_headers.setdefault("Authorization", f"Bearer {self.read_token}")
        elif token == "replicate":
            all_headers.setdefault("Authorization", f"Bearer {self.replicate_token}")
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            connection.request(method, path, body=body, headers=all_headers)
            response = connection.getresponse()
            return Reply(response.status, response.headers, response.read())
        finally:
            connection.close()

    def health(self) -> dict:
        """/healthz with a read token: the status and each worker (without a token it is the status only)."""
        if self.extra.get("tls"):
            import ssl
            import urllib.request

            context = ssl._create_unverified_context()
            url, token = f"https://127.0.0.1:{self.port}/healthz", {"Authorization": f"Bearer {self.read_token}"}
            request = urllib.request.Request(url, headers=token)
            with urllib.request.urlopen(request, context=context, timeout=10) as reply:
                return json.loads(reply.read())
        return self.request("GET", "/healthz", token="read").json()

    def wait_healthy(self, timeout: float = 30, status: str = "ok") -> dict:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                last = self.health()
                if last["status"] == status:
                    return last
            except (OSError, http.client.HTTPException, ValueError):  # not listening yet
                pass
            if self.process.poll() is not None:
                raise AssertionError(f"serve exited with {self.process.returncode}:\n{self.log()}")
            time.sleep(0.05)
        raise AssertionError(f"serve not {status} within {timeout} s (last: {last}):\n{self.log()}")

    def stop(self, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise

    def worker_pids(self) -> list[int]:
        return [worker["pid"] for worker in self.health()["workers"]]


def key_url(key: str) -> str:
    return "/v1/keys/" + quote(key.encode("utf-8"), safe="")


def start_server(
    store: Path,
    log_path: Path,
    *args: str,
    env: dict | None = None,
    tokens: tuple[str, str] | None = None,
    tls: bool = False,
    global_args: tuple[str, ...] = (),
    port: int | None = None,
) -> Server:
    if tokens is None:
        tokens_store = TokenStore(store)
        names = {info.name for info in tokens_store.list()}
        suffix = len(names)
        tokens = (tokens_store.create(f"w{suffix}", "write"), tokens_store.create(f"r{suffix}", "read"))
    port = port or free_port()
    log = open(log_path, "ab")
    process = subprocess.Popen(
        [*IMSTORE, "--store", str(store), *global_args, "serve", "--port", str(port), *args],
        stdout=log,
        stderr=log,
        env={**os.environ, **(env or {})},
    )
    log.close()
    server = Server(store, port, process, log_path, tokens[0], tokens[1], {"tls": tls})
    try:
        server.wait_healthy()
    except BaseException:
        server.process.kill()
        server.process.wait()
        raise
    return server


@pytest.fixture
def start(store_path: Path, tmp_path: Path):
    """start(*serve_args, env=..., cache_args=(global options such as --cache-dir), port=...) -> Server;
    every server is stopped at the end of the test."""
    servers: list[Server] = []

    def launch(
        *args: str, env: dict | None = None, store: Path | None = None, tls: bool = False, cache_args: tuple[str, ...] = (),
        port: int | None = None,
    ) -> Server:
        server = start_server(
            store or store_path, tmp_path / f"serve-{len(servers)}.log", *args, env=env, tls=tls, global_args=cache_args, port=port
        )
        servers.append(server)
        return server

    yield launch
    for server in servers:
        if server.process.poll() is None:
            server.process.kill()  # the hardest way to go: its workers must still not outlive it
            server.process.wait()
    for server in servers:  # only once all are down: servers of one store share it in the workers' command lines
        assert_no_workers_left(server.store)


def assert_no_workers_left(store: Path, timeout: float = 20) -> None:
    """No worker process of this store may outlive its serve (they stop when serve dies)."""
    import psutil

    deadline = time.monotonic() + timeout
    left: list = []
    while time.monotonic() < deadline:
        left = []
        for process in psutil.process_iter(["cmdline"]):
            cmdline = process.info["cmdline"] or []
            if "imstore.server.worker" in cmdline and str(store) in cmdline:
                left.append(process)
        if not left:
            return
        time.sleep(0.05)
    for process in left:
        process.kill()
    raise AssertionError(f"worker processes outlived serve: {[p.pid for p in left]}")


@pytest.fixture
def server(start) -> Server:
    return start("--workers", "2")


def _module_server(tmp_path_factory, *args: str):
    root = tmp_path_factory.mktemp("shared")
    store = root / "store"
    Store.init(store)[0].close()
    server = start_server(store, root / "serve.log", "--workers", "2", *args)
    yield server
    if server.process.poll() is None:
        server.process.kill()
        server.process.wait()
    assert_no_workers_left(store)


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory):
    """One server for a module of tests that do not disturb each other (faster than one per test)."""
    yield from _module_server(tmp_path_factory, "--max-body", "1M", "--client-timeout", "2")


@pytest.fixture(scope="module")
def module_server(tmp_path_factory):
    """A module-wide server with default limits."""
    yield from _module_server(tmp_path_factory)
