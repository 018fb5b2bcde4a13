"""The gateway answers repeat latest-version GETs by key from memory, only while the log is unchanged."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from imstore import Store
from imstore.hashing import hash_bytes
from imstore.server.latest import LatestAnswers, LogStamps, log_stamp

from .conftest import key_url

pytestmark = pytest.mark.timeout(120)


def key_hits(server) -> int:
    text = server.request("GET", "/metrics", token="read").body.decode()
    return int(re.search(r"^imstore_gateway_key_memory_hits_total (\d+)$", text, re.M).group(1))


def worker_requests(server) -> int:
    return sum(worker["requests"] for worker in server.health()["workers"])


def put(server, key: str, body: bytes) -> None:
    assert server.request("PUT", key_url(key), body=body).status == 201


def test_a_repeat_key_get_is_answered_from_memory_with_the_same_bytes_and_headers(shared_server):
    body = os.urandom(4096)
    put(shared_server, "latest/a", body)
    first = shared_server.request("GET", key_url("latest/a"), token="read")
    hits, forwarded = key_hits(shared_server), worker_requests(shared_server)
    second = shared_server.request("GET", key_url("latest/a"), token="read")
    assert first.status == second.status == 200 and first.body == second.body == body
    assert key_hits(shared_server) == hits + 1
    assert worker_requests(shared_server) == forwarded
    for name in ("ETag", "Cache-Control", "Content-Type", "Content-Length", "X-Imstore-Version"):
        assert second.headers[name] == first.headers[name], name


def test_a_write_through_the_server_is_seen_by_the_next_get(shared_server):
    put(shared_server, "latest/b", b"one")
    for _ in range(2):
        assert shared_server.request("GET", key_url("latest/b"), token="read").body == b"one"
    put(shared_server, "latest/b", b"two")
    reply = shared_server.request("GET", key_url("latest/b"), token="read")
    assert reply.body == b"two" and reply.headers["X-Imstore-Version"] == "2"
    assert shared_server.request("DELETE", key_url("latest/b")).status in (200, 204)
    assert shared_server.request("GET", key_url("latest/b"), token="read").status == 404


def test_a_write_by_another_process_is_seen_by_the_next_get_after_its_commit(shared_server):
    put(shared_server, "latest/c", b"served")
    for _ in range(2):
        assert shared_server.request("GET", key_url("latest/c"), token="read").body == b"served"
    with Store.open(shared_server.store) as other:  # this test process is the other writer
        other.put("latest/c", b"written aside")
    reply = shared_server.request("GET", key_url("latest/c"), token="read")
    assert reply.status == 200 and reply.body == b"written aside" and reply.headers["X-Imstore-Version"] == "2"


def flip_a_byte(store: Path, object_id: str) -> None:
    path = Path(store) / "objects" / object_id[:2] / object_id[2:]
    os.chmod(path, 0o644)
    raw = bytearray(path.read_bytes())
    raw[100] ^= 0x01
    path.write_bytes(bytes(raw))


def test_a_damaged_object_read_by_key_is_an_error_every_time(shared_server):
    body = os.urandom(4096)
    with Store.open(shared_server.store) as store:  # no read cache: the workers have no copy
        store.put("latest/d", body)
    flip_a_byte(shared_server.store, hash_bytes(body))
    for _ in range(3):
        reply = shared_server.request("GET", key_url("latest/d"), token="read")
        assert reply.status == 500 and reply.json()["error"] == "CorruptObject"


def test_bytes_kept_before_the_damage_are_the_verified_ones(shared_server):
    body = os.urandom(4096)
    with Store.open(shared_server.store) as store:
        store.put("latest/f", body)
    assert shared_server.request("GET", key_url("latest/f"), token="read").body == body  # hashed, then kept
    flip_a_byte(shared_server.store, hash_bytes(body))
    reply = shared_server.request("GET", key_url("latest/f"), token="read")
    assert reply.status == 200 and reply.body == body  # the right bytes, never the damaged ones


def test_conditional_and_versioned_key_gets_go_to_a_worker(shared_server):
    put(shared_server, "latest/e", b"e")
    etag = shared_server.request("GET", key_url("latest/e"), token="read").headers["ETag"]
    for target, headers in ((key_url("latest/e"), {"If-None-Match": etag}), (key_url("latest/e") + "?version=1", {}),
                            (key_url("latest/e"), {"Cache-Control": "no-cache"})):  # fmt: skip
        hits, forwarded = key_hits(shared_server), worker_requests(shared_server)
        assert shared_server.request("GET", target, headers=headers, token="read").status in (200, 304)
        assert key_hits(shared_server) == hits and worker_requests(shared_server) == forwarded + 1


def test_an_answer_relayed_while_the_log_moved_is_not_kept(tmp_path):
    Store.init(tmp_path / "s")[0].close()
    answers = LatestAnswers(str(tmp_path / "s"))
    body = b"x" * 10
    headers = {"ETag": f'"{hash_bytes(body)}"'}
    before = answers.stamp()
    with Store.open(tmp_path / "s") as store:
        store.put("k", body)  # committed while the request was at a worker
    assert answers.stamp() != before
    answers.keep("/v1/keys/k", before, headers, body)
    assert answers.get("/v1/keys/k", answers.stamp()) is None
    answers.keep("/v1/keys/k", answers.stamp(), {**headers, "X-Imstore-Stale": "1"}, body)
    assert answers.get("/v1/keys/k", answers.stamp()) is None
    answers.keep("/v1/keys/k", answers.stamp(), headers, body[:-1] + b"!")  # bytes that do not hash to the ETag
    assert answers.get("/v1/keys/k", answers.stamp()) is None
    answers.keep("/v1/keys/k", answers.stamp(), headers, body)
    kept = answers.get("/v1/keys/k", answers.stamp())
    assert (kept.headers, kept.data) == (headers, body)


def test_many_empty_answers_still_fill_the_memory_bound(tmp_path):
    Store.init(tmp_path / "s")[0].close()
    answers = LatestAnswers(str(tmp_path / "s"), max_bytes=10 * 1024)
    headers = {"ETag": f'"{hash_bytes(b"")}"'}
    stamp = answers.stamp()
    for number in range(100):
        answers.keep(f"/v1/keys/empty{number}", stamp, headers, b"")
    kept = [number for number in range(100) if answers.get(f"/v1/keys/empty{number}", stamp) is not None]
    assert kept == list(range(90, 100))  # ENTRY_OVERHEAD each: the newest ten fit


def test_the_log_is_stamped_again_once_a_client_has_been_read_from(tmp_path):
    Store.init(tmp_path / "s")[0].close()
    reads = [0]
    stamps = LogStamps(str(tmp_path / "s"), reads=lambda: reads[0])
    first = stamps.now()
    with Store.open(tmp_path / "s") as store:
        store.put("k", b"committed by another process")
    assert stamps.now() == first  # no request read since the stamp: none of them can have been sent after the commit
    reads[0] += 1  # a request's bytes arrived: it may have been sent after the commit
    assert stamps.now() != first and stamps.now() == log_stamp(str(tmp_path / "s"))
    assert LogStamps(str(tmp_path / "s")).now() == log_stamp(str(tmp_path / "s"))  # without a count: every time
