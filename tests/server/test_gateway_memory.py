"""The gateway answers repeat GETs of small objects by full id from memory, and only those."""

from __future__ import annotations

import os
import re

import pytest

from imstore.hashing import hash_bytes
from imstore.server.hot import HotObjects
from imstore.server.memory import GatewayMemory

from .conftest import key_url

pytestmark = pytest.mark.timeout(120)

IMMUTABLE = "private, max-age=31536000, immutable"


def memory_hits(server) -> int:
    text = server.request("GET", "/metrics", token="read").body.decode()
    return int(re.search(r"^imstore_gateway_object_memory_hits_total (\d+)$", text, re.M).group(1))


def worker_requests(server) -> int:
    return sum(worker["requests"] for worker in server.health()["workers"])


def stored(server, key: str, size: int = 4096) -> tuple[str, bytes]:
    body = os.urandom(size)
    assert server.request("PUT", key_url(key), body=body).status == 201
    return hash_bytes(body), body


def test_a_repeat_object_get_is_answered_from_memory_with_the_same_bytes_and_headers(shared_server):
    object_id, body = stored(shared_server, "memory/a")
    first = shared_server.request("GET", f"/v1/objects/{object_id}", token="read")
    hits, forwarded = memory_hits(shared_server), worker_requests(shared_server)
    second = shared_server.request("GET", f"/v1/objects/{object_id}", token="read")
    assert first.status == second.status == 200
    assert first.body == second.body == body
    assert memory_hits(shared_server) == hits + 1
    assert worker_requests(shared_server) == forwarded  # no worker saw the second GET
    for name in ("ETag", "Cache-Control", "Content-Type", "Content-Length", "Accept-Ranges"):
        assert second.headers[name] == first.headers[name], name
    assert second.headers["ETag"] == f'"{object_id}"' and second.headers["Cache-Control"] == IMMUTABLE


def test_memory_still_needs_a_token(shared_server):
    object_id, _ = stored(shared_server, "memory/auth")
    assert shared_server.request("GET", f"/v1/objects/{object_id}", token="read").status == 200
    assert shared_server.request("GET", f"/v1/objects/{object_id}", token=None).status == 401
    bad = shared_server.request("GET", f"/v1/objects/{object_id}", headers={"Authorization": "Bearer nope"}, token=None)
    assert bad.status == 401


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"Cache-Control": "no-cache"}, 200),
        ({"Range": "bytes=0-9"}, 206),
        ({"Range": "bytes=99999-"}, 416),
        ({"If-None-Match": "IDTAG"}, 304),
    ],
)
def test_no_cache_conditional_and_range_requests_go_to_a_worker(shared_server, headers, status):
    object_id, body = stored(shared_server, f"memory/{status}")
    assert shared_server.request("GET", f"/v1/objects/{object_id}", token="read").status == 200  # now in memory
    headers = {name: value.replace("IDTAG", f'"{object_id}"') for name, value in headers.items()}
    hits, forwarded = memory_hits(shared_server), worker_requests(shared_server)
    reply = shared_server.request("GET", f"/v1/objects/{object_id}", headers=headers, token="read")
    assert reply.status == status
    if status == 206:
        assert reply.body == body[:10]
    assert memory_hits(shared_server) == hits
    assert worker_requests(shared_server) == forwarded + 1


def test_prefixes_are_never_answered_from_memory(shared_server):
    object_id, body = stored(shared_server, "memory/prefix")
    for _ in range(2):
        hits = memory_hits(shared_server)
        reply = shared_server.request("GET", f"/v1/objects/{object_id[:12]}", token="read")
        assert reply.status == 200 and reply.body == body
        assert memory_hits(shared_server) == hits


def test_bytes_that_do_not_hash_to_the_id_are_not_kept(tmp_path):
    memory = GatewayMemory(str(tmp_path))
    good = os.urandom(100)
    # Flip a bit of the last byte: setting it to a fixed byte would leave the data whole one time in 256.
    memory.keep_object(hash_bytes(good), {"ETag": "x"}, good[:-1] + bytes([good[-1] ^ 1]))
    assert memory.find(f"/v1/objects/{hash_bytes(good)}") is None
    memory.keep_object(hash_bytes(good), {"ETag": "x", "X-Imstore-Worker": "1"}, good)
    route, kept = memory.find(f"/v1/objects/{hash_bytes(good)}")
    assert route == "object" and kept.data == good and kept.headers == {"ETag": "x"}
    assert kept.head.startswith(b"HTTP/1.1 200 OK\r\nETag: x\r\n") and kept.head.endswith(b"Content-Length: 100\r\n")
    assert memory.find(f"/v1/objects/{hash_bytes(good)}?x=1") is None


def test_memory_is_bounded_in_bytes():
    memory: HotObjects[None] = HotObjects(max_bytes=1000)
    blobs = [os.urandom(400) for _ in range(5)]
    for blob in blobs:
        memory.put(hash_bytes(blob), None, blob)
    kept = [blob for blob in blobs if memory.get(hash_bytes(blob)) is not None]
    assert kept == blobs[-2:]  # the oldest went first; 2 x 400 fit in 1000
    memory.put("big", None, os.urandom(HotObjects.MAX_OBJECT + 1))
    assert memory.get("big") is None
