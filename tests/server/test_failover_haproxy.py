"""The failover, end to end, through a real haproxy (deploy/haproxy.cfg) in front of a sync primary and its standby.

Writers record every acknowledged write. The standby is paused (SIGSTOP) so the primary commits writes it can
never confirm (503 NotReplicated); the primary is killed with SIGKILL; the standby goes on and is promoted. Then:
every acknowledged write is there with its bytes (0 lost); the old primary restarted with --peer is fenced;
`imstore rejoin` keeps its extra frames in log/orphans/ and none of them was acknowledged; verify is clean and
the logs are byte-identical on both nodes.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest

from imstore.records import HEADER, HEADER_SIZE, decode_payload
from imstore.server.auth import TokenStore
from tests.conftest import run_cli_process
from tests.server.conftest import key_url
from tests.server.test_haproxy import haproxy, through, wait_for_writes_to  # noqa: F401 -- haproxy is a fixture
from tests.server.test_standby import SEGMENT, poll, standby_of  # noqa: F401 -- standby_of is a fixture

pytestmark = pytest.mark.slow


class Writers:
    """Threads that PUT unique keys through the balancer until stopped; they keep what was acknowledged (2xx)."""

    def __init__(self, port: int, token: str, count: int = 4):
        self.port, self.token = port, token
        self.acknowledged: dict[str, bytes] = {}
        self.refused: list[tuple[str, int, str]] = []  # (key, status, error) of each write not acknowledged
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(number,), daemon=True) for number in range(count)]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    def _run(self, number: int) -> None:
        for attempt in range(100_000):  # bounded: stop() ends it long before
            if self._stop.is_set():
                return
            key, body = f"w{number}/{attempt}", os.urandom(64 + attempt % 512)
            status, _headers, answer = through(self.port, "PUT", key_url(key), self.token, body)
            with self._lock:
                if 200 <= status < 300:
                    self.acknowledged[key] = body
                else:
                    error = json.loads(answer).get("error", "") if answer.startswith(b"{") else ""
                    self.refused.append((key, status, error))
            if status not in (200, 201):
                time.sleep(0.02)  # a refused write is retried as a new key after a breath, not in a hot loop

    def count(self, error: str | None = None) -> int:
        with self._lock:
            return len(self.acknowledged) if error is None else sum(1 for _k, _s, e in self.refused if e == error)


def frames_of(data: bytes):
    position = 0
    while position < len(data):
        length = HEADER.unpack_from(data, position)[0]
        yield from decode_payload(data[position + HEADER_SIZE : position + HEADER_SIZE + length])
        position += HEADER_SIZE + length


def cli(*args: str, token: str | None = None) -> dict:
    result = run_cli_process(["--json", *args], env={"IMSTORE_TOKEN": token} if token else None, timeout=120)
    assert result.code == 0, result.stderr
    return json.loads(result.out)


def test_failover_through_haproxy_loses_no_acknowledged_write_and_the_old_primary_rejoins(start, standby_of, haproxy):  # noqa: F811
    primary = start("--workers", "2", "--sync-standbys", "1", "--sync-timeout", "1")
    replicate = TokenStore(primary.store).create("standby", "replicate")
    standby = standby_of(primary, token=replicate)
    balancer = haproxy(primary.port, standby.port)
    wait_for_writes_to(balancer, "node1")
    writers = Writers(balancer, primary.write_token)
    writers.start()
    try:
        poll(lambda: writers.count() >= 40, "writes are acknowledged in sync mode", timeout=60)
        # The standby stops taking frames: the primary commits writes it can no longer confirm (503 NotReplicated).
        os.kill(standby.process.pid, signal.SIGSTOP)
        try:
            poll(lambda: writers.count("NotReplicated") >= 2, "writes committed on the primary alone are refused", timeout=60)
            primary.process.kill()  # kill -9
            primary.process.wait()
        finally:
            os.kill(standby.process.pid, signal.SIGCONT)
        acknowledged_at_kill = dict(writers.acknowledged)
        promoted = cli("--store", str(standby.store), "promote")
        assert promoted["epoch"] == 1
        wait_for_writes_to(balancer, "node2")
        before = writers.count()
        poll(lambda: writers.count() >= before + 20, "the promoted standby takes the writes through haproxy", timeout=60)
    finally:
        writers.stop()

    # 0 acknowledged writes lost: each one, with its bytes, through the balancer (the new primary answers).
    assert len(acknowledged_at_kill) >= 40
    for key, body in writers.acknowledged.items():
        status, _headers, answer = through(balancer, "GET", key_url(key), primary.read_token)
        assert (status, answer) == (200, body), key

    # The old primary comes back with --peer: fenced before any write, and haproxy sends it none.
    old = start("--workers", "1", "--peer", standby.url, "--sync-standbys", "1", "--sync-timeout", "1", port=primary.port)
    poll(lambda: old.request("GET", "/healthz", token=None).json()["role"] == "fenced", "the old primary is fenced")
    assert old.request("GET", "/healthz/writable", token=None).status == 503
    refused = old.request("PUT", key_url("after-fence"), b"never")
    assert refused.status == 503 and refused.headers["Retry-After"]
    assert old.stop() == 0

    # rejoin: the frames the new primary never had go aside; none of them was acknowledged.
    old_log = (primary.store / SEGMENT).read_bytes()
    rejoined = cli("--store", str(primary.store), "rejoin", standby.url, token=replicate)
    assert rejoined["orphans"], rejoined
    orphaned = list(frames_of((primary.store / rejoined["orphans"]).read_bytes()))
    assert orphaned and (primary.store / rejoined["orphans"]).read_bytes() == old_log[rejoined["fork_offset"] :]
    assert not [record.key for record in orphaned if record.key in writers.acknowledged]
    refused_keys = {key for key, _status, _error in writers.refused}
    assert all(record.key in refused_keys for record in orphaned)  # each was a write its client saw refused

    # Both nodes: verify clean, logs byte for byte the same.
    assert (primary.store / SEGMENT).read_bytes() == (standby.store / SEGMENT).read_bytes()
    for node in (primary, standby):
        report = cli("--store", str(node.store), "verify")
        assert report["ok"], report


def test_async_failover_loses_at_most_the_lag_at_the_kill(start, standby_of, haproxy):  # noqa: F811
    primary = start("--workers", "2")
    standby = standby_of(primary)
    balancer = haproxy(primary.port, standby.port)
    wait_for_writes_to(balancer, "node1")
    writers = Writers(balancer, primary.write_token)
    writers.start()
    try:
        poll(lambda: writers.count() >= 60, "writes are acknowledged", timeout=60)
        primary.process.kill()  # kill -9
        primary.process.wait()
        acknowledged_at_kill = dict(writers.acknowledged)
    finally:
        writers.stop()
    old_log = (primary.store / SEGMENT).read_bytes()
    kept = poll(lambda: (s := standby.request("GET", "/healthz", token=None).json())["error"] and s, "the standby sees the primary go")
    standby_log = (standby.store / SEGMENT).read_bytes()
    assert old_log.startswith(standby_log)  # the standby holds a byte-identical prefix of the primary's log
    lag_at_kill = len(list(frames_of(old_log))) - kept["head"]["seq"]
    cli("--store", str(standby.store), "promote")
    wait_for_writes_to(balancer, "node2")
    lost = [key for key, body in acknowledged_at_kill.items() if through(balancer, "GET", key_url(key), primary.read_token)[2] != body]
    assert len(lost) <= lag_at_kill, (lost, lag_at_kill)
    report = cli("--store", str(standby.store), "verify")
    assert report["ok"], report
