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


# ============================================================ D5: a hung worker
def test_a_hung_worker_is_routed_around_reported_and_replaced(start):
    """SIGSTOP one of two workers: /healthz stops saying ok, every request still gets its answer
    (within the client's bounded wait), and the stopped worker is killed and replaced."""
    server = start("--workers", "2", env={"IMSTORE_WORKER_TIMEOUT": "4"})
    assert server.request("PUT", key_url("hung/k"), body=b"before").status == 201
    victim = server.health()["workers"][0]["pid"]
    answers: list[int] = []

    def requests_complete_until_replaced() -> bool:
        got = server.request("GET", key_url("hung/k"), token="read", headers={"Cache-Control": "no-cache"}, timeout=60)
        body = uuid.uuid4().bytes
        put = server.request("PUT", key_url("hung/w"), body=body, headers={"Idempotency-Key": uuid.uuid4().hex}, timeout=60)
        answers.extend([got.status, put.status])
        first = server.health()["workers"][0]
        return first["alive"] and first["pid"] != victim

    with stopped(victim):
        public = wait_until(lambda: server.request("GET", "/healthz", token=None).json()["status"] != "ok", 60,
                            "/healthz stops saying ok for a stopped worker")  # fmt: skip
        wait_until(requests_complete_until_replaced, 120, "the stopped worker is replaced", step=0.01)
    assert public is True
    assert answers and set(answers) <= {200, 201}, answers
    assert server.wait_healthy()["status"] == "ok"
    log = server.log()
    assert f"(pid {victim}) has not answered" in log and "killing it to start a new one" in log, log[-3000:]


@pytest.mark.parametrize("text, expected", [("", 10.0), ("2.5", 2.5), ("0", None), ("-1", None), ("soon", None), ("nan", None)])
def test_the_worker_timeout_comes_from_the_environment(monkeypatch, text, expected):
    from imstore.errors import UsageError
    from imstore.server.supervisor import worker_timeout_from_env

    monkeypatch.setenv("IMSTORE_WORKER_TIMEOUT", text)
    if expected is None:
        with pytest.raises(UsageError, match="IMSTORE_WORKER_TIMEOUT"):
            worker_timeout_from_env()
    else:
        assert worker_timeout_from_env() == expected
