"""`imstore serve --follow URL`: a standby that pulls continuously, serves reads, refuses writes naming its primary."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from imstore.server.auth import TokenStore
from tests.conftest import run_cli_process
from tests.server.conftest import Server, assert_no_workers_left, key_url, start_server

SEGMENT = Path("log") / "00000000000000000000.log"


@pytest.fixture
def standby_of(tmp_path: Path):
    """standby_of(primary, name, token) -> a serve --follow of it (with token, default a replicate one) on a store it
    clones at start; killed at the end."""
    started: list[Server] = []

    def launch(primary: Server, name: str = "standby", token: str | None = None) -> Server:
        server = start_server(tmp_path / name, tmp_path / f"{name}-{len(started)}.log", "--workers", "1", "--follow", primary.url,
                              env={"IMSTORE_TOKEN": token or primary.replicate_token},
                              tokens=(primary.write_token, primary.read_token))  # fmt: skip
        started.append(server)
        return server

    yield launch
    for server in started:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait()
    for server in started:
        assert_no_workers_left(server.store)


def poll(condition, what: str, timeout: float = 15.0):
    """The condition's first truthy value within timeout (a real condition polled, never a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"not within {timeout} s: {what}")


def same_log(primary: Server, standby: Server) -> bool:
    return (standby.store / SEGMENT).read_bytes() == (primary.store / SEGMENT).read_bytes()


def test_a_standby_serves_the_primary_s_writes_and_refuses_its_own(start, standby_of):
    primary = start("--workers", "2")
    assert primary.request("PUT", key_url("before"), b"one").status == 201
    standby = standby_of(primary)
    assert primary.request("PUT", key_url("after"), b"two").status == 201
    reply = poll(lambda: (r := standby.request("GET", key_url("after"), token="read")).status == 200 and r, "the write reaches the standby")
    assert reply.body == b"two"
    refused = standby.request("PUT", key_url("here"), b"no")
    assert refused.status == 503 and refused.headers["Retry-After"]
    assert primary.url in refused.json()["detail"]
    remote = run_cli_process(["--remote", standby.url, "put", "here", "-"], stdin=b"no", env={"IMSTORE_TOKEN": primary.write_token})
    assert remote.code == 6 and primary.url in remote.stderr
    assert same_log(primary, standby)


def test_health_says_role_head_and_lag_and_the_active_checks_answer_for_a_load_balancer(start, standby_of):
    primary = start("--workers", "1")
    assert primary.request("PUT", key_url("k"), b"v").status == 201
    standby = standby_of(primary)
    head = primary.request("GET", "/healthz", token=None).json()
    assert head["role"] == "primary" and head["head"]["seq"] == 1 and head["epoch"] == 0
    health = poll(lambda: (h := standby.request("GET", "/healthz", token=None).json())["lag_records"] == 0 and h, "standby caught up")
    assert health["role"] == "standby" and health["primary"] == primary.url and health["head"] == head["head"]
    assert health["lag_seconds"] == 0 and "workers" not in health  # public: no PIDs without a token
    assert primary.request("GET", "/healthz/writable", token=None).status == 200
    not_writable = standby.request("GET", "/healthz/writable", token=None)
    assert not_writable.status == 503 and not_writable.headers["Retry-After"]
    assert standby.request("GET", "/healthz/readable?max_lag=0", token=None).status == 200
    assert primary.request("GET", "/healthz/readable?max_lag=0", token=None).status == 200
    metrics = standby.request("GET", "/metrics", token="read").body.decode()
    assert "imstore_replication_lag_records 0" in metrics and "imstore_replication_up 1" in metrics


def test_a_token_created_or_revoked_on_the_primary_is_so_on_the_standby(start, standby_of):
    primary = start("--workers", "1")
    standby = standby_of(primary)
    token = TokenStore(primary.store).create("late", "read")
    bearer = {"Authorization": f"Bearer {token}"}
    poll(lambda: standby.request("GET", "/v1/keys", headers=bearer, token=None).status == 200, "the new token works on the standby")
    TokenStore(primary.store).revoke("late")
    poll(lambda: standby.request("GET", "/v1/keys", headers=bearer, token=None).status == 401, "the revocation reaches the standby")


def test_a_standby_killed_mid_pull_resumes_and_ends_byte_identical(start, standby_of):
    primary = start("--workers", "2")
    standby = standby_of(primary)
    stop = threading.Event()
    written: list[str] = []

    def writer():
        number = 0
        while not stop.is_set() and number < 2000:
            if primary.request("PUT", key_url(f"w{number}"), b"x" * 512).status == 201:
                written.append(f"w{number}")
            number += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        poll(lambda: len(written) >= 50 and (standby.store / SEGMENT).stat().st_size > 0, "writes under way")
        standby.process.kill()  # kill -9, mid-pull: writes keep coming
        standby.process.wait()
        poll(lambda: len(written) >= 100, "more writes while the standby is down")
        again = standby_of(primary)
    finally:
        stop.set()
        thread.join(60)
    poll(lambda: same_log(primary, again), "the restarted standby catches up byte for byte", timeout=30)
    verified = run_cli_process(["--store", str(again.store), "verify"])
    assert verified.code == 0, verified.stdout + verified.stderr.encode()
