"""F11 through the server: while the store is down, a running `imstore serve` answers
what its workers' read cache holds (hash-checked), marks a latest version served from
the cache with `X-Imstore-Stale: 1`, refuses writes at once with 503, and is itself
again when the store comes back.

The outages are the ones of tests/reliability/test_f11_outage.py that reach another
process: the store renamed away or replaced by a file, objects/ or log/ replaced by a
file, log/ gone (the EIO fault layer patches this process only; the tests run as
root, so chmod blocks nothing).
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from conftest import run_cli_process
from outages import outage

from imstore import Store
from imstore.hashing import hash_bytes

from .conftest import Reply, Server, key_url

pytestmark = pytest.mark.timeout(180)

SERVER_OUTAGES = ["store-renamed", "store-replaced-by-file", "objects-replaced-by-file", "log-gone", "log-replaced-by-file"]
STALE = "X-Imstore-Stale"
TOKEN_REFRESH = 1.5  # seconds: the gateway re-reads the token file at most once a second; outlast that
FAST = 5.0  # a generous bound: a refused write must fail at once, not hang on the missing store


@pytest.fixture
def filled(start, store_path: Path) -> tuple[Server, dict]:
    """A running server with a (2 versions) and b (50 kB) read through it, so that they are
    cached, and c written straight to the store and never read (so never cached)."""
    server = start("--workers", "2")
    a1, a2, b1 = b"a one", b"a two", os.urandom(50_000)
    for key, data in (("a", a1), ("a", a2), ("b", b1)):
        assert server.request("PUT", key_url(key), data).status == 201
    with Store.open(store_path) as store:  # no cache: nothing of c is cached
        store.put("c", b"never cached")
    expected = {("a", 1): a1, ("a", 2): a2, ("b", 1): b1}
    for _ in range(2):  # every request twice: both workers see each one (round robin)
        for (key, version), data in expected.items():
            assert server.request("GET", f"{key_url(key)}?version={version}").body == data
            assert server.request("GET", f"/v1/objects/{hash_bytes(data)}").body == data
        for key in ("a", "b"):
            reply = server.request("GET", key_url(key))
            assert reply.status == 200 and STALE not in reply.headers
    return server, expected


def _assert_problem(reply: Reply, status: int) -> dict:
    assert reply.status == status, (reply.status, reply.body[:300])
    assert reply.headers["Content-Type"] == "application/problem+json"
    document = json.loads(reply.body)
    assert document["status"] == status
    return document


def _check_reads_during_outage(server: Server, expected: dict, kind: str) -> None:
    log_readable = kind == "objects-replaced-by-file"
    objects_readable = kind.startswith("log-")
    for (key, version), data in expected.items():
        reply = server.request("GET", f"{key_url(key)}?version={version}", token="read")
        assert reply.status == 200 and reply.body == data, (key, version, reply.status, reply.body[:300])
        assert reply.headers["ETag"] == f'"v{version}-{hash_bytes(data)}"' and STALE not in reply.headers
        digest = hash_bytes(data)
        for wanted in (digest, digest[:12]):
            by_hash = server.request("GET", f"/v1/objects/{wanted}", token="read")
            assert by_hash.status == 200 and by_hash.body == data, (wanted, by_hash.status, by_hash.body[:300])
    latest = server.request("GET", key_url("a"), token="read")
    assert latest.status == 200 and latest.body == expected["a", 2] and latest.headers["X-Imstore-Version"] == "2"
    if log_readable:  # the log and index are fine: the latest is known for sure, not stale
        assert STALE not in latest.headers
    else:
        assert latest.headers.get(STALE) == "1"
    assert server.request("HEAD", key_url("a"), token="read").headers.get(STALE) == (None if log_readable else "1")
    _assert_problem(server.request("GET", f"{key_url('c')}?version=1", token="read"), 503)
    uncached = server.request("GET", f"/v1/objects/{hash_bytes(b'never cached')}", token="read")
    if objects_readable:  # objects/ is fine: bytes by hash still come from the store
        assert uncached.status == 200 and uncached.body == b"never cached"
    else:
        _assert_problem(uncached, 503)


def _assert_writes_refused_fast(server: Server) -> None:
    for method, body, headers in (
        ("PUT", b"refused", {}),
        ("DELETE", None, {}),
        ("PUT", b"refused", {"Idempotency-Key": os.urandom(8).hex()}),
        ("DELETE", None, {"Idempotency-Key": os.urandom(8).hex()}),
    ):
        began = time.monotonic()
        reply = server.request(method, key_url("a"), body, headers, timeout=FAST * 4)
        elapsed = time.monotonic() - began
        detail = _assert_problem(reply, 503)["detail"]
        assert "unavailable" in detail or "not a directory" in detail, detail
        assert elapsed < FAST, f"{method} took {elapsed:.1f} s to be refused"


def _assert_back(server: Server, store_path: Path, expected: dict) -> None:
    for _ in range(2):  # both workers
        latest = server.request("GET", key_url("a"))
        assert latest.status == 200 and latest.body == expected["a", 2] and STALE not in latest.headers
        assert server.request("GET", f"{key_url('c')}?version=1").body == b"never cached"
    assert server.request("PUT", key_url("a"), b"a three").status == 201
    for _ in range(2):
        latest = server.request("GET", key_url("a"))
        assert latest.body == b"a three" and latest.headers["X-Imstore-Version"] == "3" and STALE not in latest.headers
    with Store.open(store_path) as store:
        report = store.verify()
        assert report.ok and report.records == 5, report  # a, a, b, c and the put after: nothing from the outage


@pytest.mark.parametrize("kind", SERVER_OUTAGES)
def test_cached_reads_served_stale_latest_marked_writes_refused_fast_and_recovery(kind, filled, store_path):
    server, expected = filled
    with outage(kind, store_path):
        # Keep reading for longer than the gateway's token refresh: the tokens stay valid while
        # the token file is out of reach with the rest of the store.
        began, rounds = time.monotonic(), 0
        while rounds < 2 or (time.monotonic() - began < TOKEN_REFRESH and rounds < 100):
            _check_reads_during_outage(server, expected, kind)
            rounds += 1
        _assert_writes_refused_fast(server)
        _check_reads_during_outage(server, expected, kind)
        assert server.process.poll() is None
    _assert_back(server, store_path, expected)
    assert server.stop() == 0


def test_workers_restarted_during_the_outage_start_on_the_cache_and_write_once_the_store_is_back(filled, store_path):
    """A worker that starts while the store is gone opens it on its cache alone (read-only), and
    opens the real store again on its next request once it is back."""
    server, expected = filled
    with outage("store-renamed", store_path):
        before = server.worker_pids()
        for pid in before:
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            workers = server.health()["workers"]
            if all(worker["alive"] and worker["pid"] not in before for worker in workers):
                break
            time.sleep(0.05)
        assert all(worker["alive"] and worker["pid"] not in before for worker in workers), workers
        for _ in range(2):
            _check_reads_during_outage(server, expected, "store-renamed")
        _assert_writes_refused_fast(server)
    _assert_back(server, store_path, expected)
    assert server.stop() == 0


def test_a_latest_read_of_a_store_that_is_there_is_never_marked_stale(server):
    for number in range(1, 4):
        assert server.request("PUT", key_url("k"), f"v{number}".encode()).status == 201
        for _ in range(4):  # both workers, twice: the second read comes from the cache
            for method in ("GET", "HEAD"):
                reply = server.request(method, key_url("k"))
                assert reply.status == 200 and reply.headers["X-Imstore-Version"] == str(number)
                assert STALE not in reply.headers
            assert server.request("GET", key_url("k")).body == f"v{number}".encode()
            ranged = server.request("GET", key_url("k"), headers={"Range": "bytes=1-"})
            assert ranged.status == 206 and ranged.body == str(number).encode() and STALE not in ranged.headers


def test_the_remote_cli_warns_about_a_stale_latest_and_exits_0(filled, store_path, tmp_path):
    server, expected = filled
    token_file = tmp_path / "token"
    token_file.write_text(server.read_token + "\n")
    token_file.chmod(0o600)  # a token file others can read is warned about
    remote = ["--remote", server.url, "--token-file", str(token_file)]
    with outage("store-renamed", store_path):
        stale = run_cli_process([*remote, "get", "a"])
        assert stale.code == 0 and stale.stdout == expected["a", 2]
        assert "may be stale" in stale.stderr, stale.stderr
        pinned = run_cli_process([*remote, "get", "a", "--version", "1"])
        assert pinned.code == 0 and pinned.stdout == expected["a", 1] and "stale" not in pinned.stderr
        missing = run_cli_process([*remote, "get", "c", "--version", "1"])
        assert missing.code == 6 and missing.stdout == b""
    back = run_cli_process([*remote, "get", "a"])
    assert back.code == 0 and back.stdout == expected["a", 2] and back.stderr == ""


def test_serve_passes_its_cache_options_to_the_workers(start, store_path, tmp_path):
    """--cache-dir given to serve (not in the environment) is where the workers cache; --no-cache caches nothing."""
    chosen = tmp_path / "chosen-cache"
    env = {"IMSTORE_CACHE_DIR": str(tmp_path / "from-env")}
    server = start("--workers", "1", env=env, cache_args=("--cache-dir", str(chosen)))
    assert server.request("PUT", key_url("k"), b"cached").status == 201
    assert server.request("GET", key_url("k")).body == b"cached"
    assert any(chosen.glob("*/data")), list(chosen.rglob("*"))
    assert not (tmp_path / "from-env").exists()
    assert server.stop() == 0
    plain = start("--workers", "1", env=env, cache_args=("--cache-dir", str(tmp_path / "unused"), "--no-cache"))
    assert plain.request("GET", key_url("k")).body == b"cached"
    assert not (tmp_path / "unused").exists() and not (tmp_path / "from-env").exists()


def test_a_remote_batch_warns_about_each_stale_latest_and_the_gateway_keeps_none(filled, store_path, tmp_path):
    server, expected = filled
    token_file = tmp_path / "token"
    token_file.write_text(server.read_token + "\n")
    token_file.chmod(0o600)
    remote = ["--remote", server.url, "--token-file", str(token_file)]
    with outage("log-gone", store_path):
        stale = run_cli_process([*remote, "get", "--batch-check"], stdin=b"a\na\tv\na\t1\n")
        assert stale.code == 0, stale.stderr
        assert stale.stdout == f"a\t2\t{hash_bytes(expected['a', 2])}\t5\na\tmissing\na\t1\t{hash_bytes(expected['a', 1])}\t5\n".encode()
        assert stale.stderr.count("may be stale") == 1, stale.stderr
        for _ in range(2):  # answered by a worker each time, marked: the gateway kept no stale answer
            assert server.request("GET", key_url("a"), token="read").headers.get(STALE) == "1"
    back = server.request("GET", key_url("a"), token="read")
    assert back.status == 200 and STALE not in back.headers
