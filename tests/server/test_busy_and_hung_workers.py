"""Workers that are behind (a full listen queue: back-pressure, S3) or hung (SIGSTOP: D5).

A burst waits for room instead of failing, every 503 says when to come back, and a worker that
does not answer within its deadline is routed around, reported, and replaced.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from contextlib import contextmanager

import pytest
from outages import outage

from .conftest import key_url

pytestmark = pytest.mark.timeout(240)


def metric(server, name: str) -> float:
    """One unlabelled value from /metrics (the gateway answers it itself, without a worker); -1 if absent."""
    text = server.request("GET", "/metrics", token="read", timeout=30).body.decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return -1


@contextmanager
def stopped(pid: int):
    """SIGSTOP pid for the block; it is continued afterwards whatever happens (if it still exists)."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass


def wait_until(condition, timeout: float, what: str, step: float = 0.02):
    """Poll condition() until it is true (returned), bounded in time and in count."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / step) + 1):
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            break
        time.sleep(step)
    raise AssertionError(f"not within {timeout} s: {what}")


# ============================================================ S3: back-pressure
def test_a_burst_past_a_full_listen_queue_waits_for_room_instead_of_failing(start):
    """The one worker is stopped while a burst of GETs and PUTs arrives: its listen queue fills up (2 here;
    the burst is larger than the default queue too). Those requests must wait in the gateway and all
    succeed once it goes on, never 503 at once."""
    server = start("--workers", "1", env={"IMSTORE_WORKER_BACKLOG": "2", "IMSTORE_WORKER_TIMEOUT": "600"})
    assert server.request("PUT", key_url("burst/k"), body=b"v").status == 201
    pid = server.worker_pids()[0]
    count = 160
    results: list = [None] * count

    def one(number: int) -> None:
        try:
            if number % 2:
                reply = server.request("GET", key_url("burst/k"), token="read", timeout=120)
            else:
                reply = server.request("PUT", key_url(f"burst/{number}"), body=b"x%d" % number, timeout=120)
            results[number] = (reply.status, reply.headers.get("Retry-After"), reply.body[:200])
        except Exception as exc:  # noqa: BLE001 -- reported by the assertion below
            results[number] = exc

    threads = [threading.Thread(target=one, args=(number,), daemon=True) for number in range(count)]
    with stopped(pid):
        for thread in threads:
            thread.start()
        # Every request has reached the gateway and waits there (or, before the fix, some were already refused).
        wait_until(lambda: metric(server, "imstore_gateway_requests_in_flight") > count or any(r is not None for r in results),
                   60, "the burst is inside the gateway")  # fmt: skip
    for thread in threads:
        thread.join(120)
    assert all(isinstance(result, tuple) for result in results), results
    wrong = [(number, result) for number, result in enumerate(results) if result[0] != (200 if number % 2 else 201)]
    assert not wrong, wrong


def test_every_503_says_when_to_retry(start, store_path):
    server = start("--workers", "1")
    with outage("store-renamed", store_path):
        for method, body in (("PUT", b"x"), ("DELETE", None)):
            headers = {"Idempotency-Key": uuid.uuid4().hex}
            reply = server.request(method, key_url("away/k"), body=body, headers=headers)
            assert reply.status == 503, reply.body
            assert reply.headers.get("Retry-After", "").isdigit(), reply.headers
