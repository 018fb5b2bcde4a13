"""Faults through the server: workers killed (F10), two servers and the CLI on one store (F9), crash after commit, shutdown."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from pathlib import Path

import pytest

from imstore import Store
from imstore.hashing import hash_bytes

from .conftest import key_url

RETRYABLE = (409, 502, 503)


def put_with_retries(server, key: str, body: bytes, attempts: int = 20):
    """A careful client: one Idempotency-Key per logical write, retried until it gets an answer."""
    headers = {"Idempotency-Key": uuid.uuid4().hex}
    reply = None
    for _ in range(attempts):
        try:
            reply = server.request("PUT", key_url(key), body=body, headers=headers, timeout=30)
        except OSError:
            reply = None
        if reply is not None and reply.status not in RETRYABLE:
            return reply
        time.sleep(0.05)
    return reply


@pytest.mark.timeout(120)
def test_a_killed_worker_comes_back_with_its_id_and_a_new_pid(start):
    server = start("--workers", "2")
    before = server.health()["workers"]
    os.kill(before[0]["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        workers = server.health()["workers"]
        if workers[0]["alive"] and workers[0]["pid"] != before[0]["pid"]:
            break
        time.sleep(0.05)
    assert [w["id"] for w in workers] == [1, 2]
    assert workers[0]["alive"] and workers[0]["pid"] != before[0]["pid"]
    assert workers[1]["pid"] == before[1]["pid"]
    metrics = server.request("GET", "/metrics", token="read").body.decode()
    assert "imstore_worker_restarts_total 1" in metrics


@pytest.mark.timeout(120)
def test_a_write_retried_after_its_worker_died_past_the_commit_makes_one_version(start):
    # Every worker dies right after a record is committed, before it can answer.
    server = start("--workers", "2", env={"IMSTORE_CRASH_AT": "index-updated"})
    reply = put_with_retries(server, "crash/a", b"first")
    assert reply is not None and reply.status == 201 and reply.json()["version"] == 1
    reply = put_with_retries(server, "crash/a", b"second")
    assert reply is not None and reply.status == 201 and reply.json()["version"] == 2
    headers = {"Idempotency-Key": "delete-once"}
    deleted = None
    for _ in range(20):
        deleted = server.request("DELETE", key_url("crash/a"), headers=headers)
        if deleted.status not in RETRYABLE:
            break
    assert deleted is not None and deleted.status == 200 and deleted.json()["version"] == 3
    assert server.request("DELETE", key_url("crash/a"), headers=headers).json()["version"] == 3  # replayed
    with Store.open(server.store) as store:
        assert [(v.version, v.op) for v in store.history("crash/a")] == [(1, "put"), (2, "put"), (3, "delete")]
        assert store.verify().ok
    # Without a key a retry is a new write: the client is told the outcome is unknown (503), and the record exists.
    unkeyed = server.request("PUT", key_url("crash/b"), body=b"x")
    assert unkeyed.status == 503


@pytest.mark.timeout(120)
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_signal_finishes_the_request_in_flight_then_exits_0(start, signum):
    server = start("--workers", "2")
    worker_pids = server.worker_pids()
    body = os.urandom(2 << 20)
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    sock.sendall(
        f"PUT {key_url('shutdown/inflight')} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {server.write_token}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n".encode() + body[: len(body) // 2]
    )
    # Signal only once the upload is really in flight: a worker is streaming it into a temp object.
    objects = Path(server.store) / "objects"
    assert wait_until(lambda: any(name.startswith(".tmp-") for name in os.listdir(objects)), 30), "the upload never reached a worker"
    server.process.send_signal(signum)
    wait_until(lambda: "stopping" in server.log(), 10)
    with pytest.raises(OSError):  # no longer accepting
        socket.create_connection(("127.0.0.1", server.port), timeout=2).close()
    sock.sendall(body[len(body) // 2 :])
    reply = b""
    while b"\r\n\r\n" not in reply:
        chunk = sock.recv(65536)
        if not chunk:
            break
        reply += chunk
    sock.close()
    assert reply.startswith(b"HTTP/1.1 201"), reply[:300]
    assert server.process.wait(30) == 0
    with Store.open(server.store) as store:
        assert store.get("shutdown/inflight") == body
    assert not any(_alive(pid) for pid in worker_pids)


def wait_until(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# ============================================================ F10
def run_f10(server, seconds: float, readers: int = 3, writers: int = 3):
    """Load from reader and writer threads while a killer SIGKILLs one worker at a time."""
    fixtures = {f"f10/read-{n}": os.urandom(2048 + n) for n in range(8)}
    for key, body in fixtures.items():
        assert put_with_retries(server, key, body).status == 201
    stop = threading.Event()
    failures: list[str] = []
    acknowledged: list[tuple[str, int, str]] = []
    counts = defaultdict(int)
    lock = threading.Lock()

    def reader(seed: int) -> None:
        rng = random.Random(seed)
        while not stop.is_set():
            key = rng.choice(list(fixtures))
            try:
                reply = server.request("GET", key_url(key), token="read", timeout=30)
                ok = reply.status == 200 and reply.body == fixtures[key]
                detail = f"GET {key}: {reply.status}"
            except OSError as exc:
                ok, detail = False, f"GET {key}: {exc}"
            with lock:
                counts["get"] += 1
                if not ok:
                    failures.append(detail)

    def writer(number: int) -> None:
        sequence = 0
        while not stop.is_set():
            sequence += 1
            key = f"f10/write-{number}-{sequence % 5}"
            body = f"{number}-{sequence}-{uuid.uuid4()}".encode()
            reply = put_with_retries(server, key, body)
            with lock:
                counts["put"] += 1
                if reply is not None and reply.status in (200, 201):
                    acknowledged.append((key, reply.json()["version"], hash_bytes(body)))
                else:
                    counts["put unanswered"] += 1

    def killer() -> None:
        rng = random.Random(7)
        while not stop.is_set():
            health = server.health()
            if health["status"] == "ok":
                victim = rng.choice(health["workers"])
                os.kill(victim["pid"], signal.SIGKILL)
                counts["kills"] += 1
                stop.wait(rng.uniform(1.0, 2.0))
            else:
                stop.wait(0.05)

    threads = [threading.Thread(target=reader, args=(n,)) for n in range(readers)]
    threads += [threading.Thread(target=writer, args=(n,)) for n in range(writers)]
    threads.append(threading.Thread(target=killer))
    for thread in threads:
        thread.start()
    stop.wait(seconds)
    stop.set()
    for thread in threads:
        thread.join(60)
    return failures, acknowledged, counts


def check_f10(server, failures, acknowledged, counts) -> None:
    assert counts["kills"] >= 2 and counts["get"] > 50 and acknowledged, dict(counts)
    assert failures == [], failures[:10]
    assert server.stop() == 0
    with Store.open(server.store) as store:
        for key, version, object_hash in acknowledged:  # every 2xx PUT is durable, as acknowledged
            assert store.resolve(key, version).hash == object_hash
        for key in {key for key, _, _ in acknowledged}:
            hashes = [v.hash for v in store.history(key)]
            assert len(hashes) == len(set(hashes)), f"a retried PUT made a second version of {key}"
        report = store.verify()
        assert report.ok, report.problems


@pytest.mark.timeout(180)
def test_f10_workers_killed_under_load_lose_no_get_and_no_put(start):
    server = start("--workers", "3")
    check_f10(server, *run_f10(server, seconds=6))


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_f10_long_workers_killed_under_load_lose_no_get_and_no_put(start):
    server = start("--workers", "3")
    check_f10(server, *run_f10(server, seconds=60, readers=4, writers=4))


# ============================================================ F9
WRITER_SCRIPT = """
import sys
from imstore import Store
store_path, name, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
with Store.open(store_path) as store:
    for n in range(count):
        for key in (f"f9/shared-{n % 3}", f"f9/{name}"):
            result = store.put(key, f"{name}-{n}-{key}".encode())
            print("ACK", key, result.version.version, flush=True)
"""


def run_f9(start, store_path, count: int) -> None:
    first, second = start("--workers", "1"), start("--workers", "2")
    acknowledged: list[tuple[str, int]] = []
    failures: list[str] = []
    lock = threading.Lock()

    def http_writer(server, name: str) -> None:
        for n in range(count):
            for key in (f"f9/shared-{n % 3}", f"f9/{name}"):
                reply = put_with_retries(server, key, f"{name}-{n}-{key}".encode())
                with lock:
                    if reply is not None and reply.status == 201:
                        acknowledged.append((key, reply.json()["version"]))
                    else:
                        failures.append(f"{name} {key}: {reply and reply.status}")

    cli = subprocess.Popen([sys.executable, "-c", WRITER_SCRIPT, str(store_path), "cli", str(count)], stdout=subprocess.PIPE, text=True)
    threads = [threading.Thread(target=http_writer, args=(s, n)) for s, n in ((first, "one"), (second, "two"), (second, "three"))]
    for thread in threads:
        thread.start()
    out, _ = cli.communicate(timeout=300)
    for thread in threads:
        thread.join(300)
    assert cli.returncode == 0 and failures == []
    acknowledged += [(line.split()[1], int(line.split()[2])) for line in out.splitlines() if line.startswith("ACK")]
    assert len(acknowledged) == 4 * count * 2
    assert len(set(acknowledged)) == len(acknowledged), "two writers were told the same version"
    assert first.stop() == 0 and second.stop() == 0
    with Store.open(store_path) as store:
        per_key = defaultdict(list)
        for record in store.log_records():
            per_key[record.key].append(record.version)
        assert sum(len(v) for v in per_key.values()) == len(acknowledged)
        for key, versions in per_key.items():
            assert versions == list(range(1, len(versions) + 1)), key
        assert store.verify().ok


@pytest.mark.timeout(240)
def test_f9_two_servers_and_the_cli_write_one_store(start, store_path):
    run_f9(start, store_path, count=25)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_f9_long_two_servers_and_the_cli_write_one_store(start, store_path):
    run_f9(start, store_path, count=250)


@pytest.mark.timeout(120)
def test_serve_listens_only_once_every_worker_answers(store_path, tmp_path):
    from imstore.server.auth import TokenStore

    from .conftest import IMSTORE, free_port

    token = TokenStore(store_path).create("w", "write")
    port = free_port()
    log = open(tmp_path / "serve.log", "wb")
    command = [*IMSTORE, "--store", str(store_path), "serve", "--port", str(port), "--workers", "3"]
    process = subprocess.Popen(command, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert process.poll() is None, (tmp_path / "serve.log").read_text()
                time.sleep(0.01)
        import http.client
        import json

        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.request("GET", "/healthz", headers={"Authorization": f"Bearer {token}"})
        health = json.loads(connection.getresponse().read())
        assert health["status"] == "ok" and all(worker["alive"] and worker["pid"] for worker in health["workers"])
        assert len(health["workers"]) == 3
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
        log.close()


def test_health_is_ok_degraded_or_down_by_live_workers():
    from imstore.server.supervisor import Supervisor

    supervisor = Supervisor("/nonexistent", 2)
    try:
        assert supervisor.health()["status"] == "down"
        supervisor.slots[0].alive = True
        assert supervisor.health()["status"] == "degraded"
        supervisor.slots[1].alive = True
        assert supervisor.health()["status"] == "ok"
        assert supervisor.pick().id in (1, 2) and supervisor.pick(exclude=supervisor.slots[0]).id == 2
    finally:
        import shutil

        shutil.rmtree(supervisor.runtime_dir, ignore_errors=True)


def test_requests_with_one_affinity_go_to_one_live_worker_and_others_round_robin():
    from imstore.server.supervisor import Supervisor

    supervisor = Supervisor("/nonexistent", 3)
    try:
        for slot in supervisor.slots:
            slot.alive = True
        uploads = [f"{number:032x}" for number in range(12)]
        chosen = {upload: supervisor.pick(affinity=upload) for upload in uploads}
        assert all(supervisor.pick(affinity=upload) is slot for upload, slot in chosen.items() for _ in range(5))
        assert len({slot.id for slot in chosen.values()}) > 1  # different uploads spread over the workers
        assert [supervisor.pick().id for _ in range(6)] == [1, 2, 3, 1, 2, 3]  # no affinity: round robin, undisturbed
        upload, slot = next(iter(chosen.items()))
        assert supervisor.pick(affinity=upload, exclude=slot) is not slot  # a retry after a failure goes elsewhere
        slot.alive = False
        moved = supervisor.pick(affinity=upload)
        assert moved is not slot and moved.alive and supervisor.pick(affinity=upload) is moved  # down: the next live one
    finally:
        import shutil

        shutil.rmtree(supervisor.runtime_dir, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_large_upload_and_download_stream_with_flat_memory(start):
    import http.client

    import psutil

    server = start("--workers", "2")
    processes = [psutil.Process(server.process.pid), *psutil.Process(server.process.pid).children()]
    before = {p.pid: p.memory_info().rss for p in processes}
    peak = dict(before)
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            for process in processes:
                try:
                    peak[process.pid] = max(peak[process.pid], process.memory_info().rss)
                except psutil.Error:
                    pass
            stop.wait(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    block = os.urandom(1 << 20)
    total = 512
    try:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
        connection.putrequest("PUT", key_url("big/upload"))
        connection.putheader("Authorization", f"Bearer {server.write_token}")
        connection.putheader("Transfer-Encoding", "chunked")
        connection.endheaders()
        for _ in range(total):
            connection.send(b"%x\r\n" % len(block) + block + b"\r\n")
        connection.send(b"0\r\n\r\n")
        reply = connection.getresponse()
        assert reply.status == 201, reply.read()
        assert __import__("json").loads(reply.read())["size"] == total << 20
        connection.request("GET", key_url("big/upload"), headers={"Authorization": f"Bearer {server.read_token}"})
        download = connection.getresponse()
        received = 0
        while piece := download.read(1 << 20):
            assert piece == block
            received += len(piece)
        assert received == total << 20
    finally:
        stop.set()
        sampler.join()
    growth = {pid: (peak[pid] - before[pid]) >> 20 for pid in before}
    assert all(value < 64 for value in growth.values()), growth
