"""What the server tells strangers: no server paths, PIDs or software versions (S7), and stored
bytes that a browser cannot run as a page of this server (S8)."""

from __future__ import annotations

import os
import socket

import pytest
from outages import outage

from imstore import Store

from .conftest import key_url

pytestmark = pytest.mark.timeout(120)

NOSNIFF = ("X-Content-Type-Options", "nosniff")


def assert_no_server_paths(server, body: bytes) -> None:
    text = body.decode("utf-8", "replace")
    for path in {str(server.store), os.path.realpath(server.store)}:
        assert path not in text, text
    assert "/objects/" not in text and "index.sqlite" not in text, text


# ============================================================ S7: paths, PIDs, versions
def test_a_damaged_object_is_reported_without_its_path(shared_server):
    data = os.urandom(5000)
    with Store.open(shared_server.store) as store:
        object_id = store.put("exposure/damaged", data).version.hash
    path = shared_server.store / "objects" / object_id[:2] / object_id[2:]
    os.chmod(path, 0o644)
    path.write_bytes(bytes([data[0] ^ 0xFF]) + data[1:])  # flipped: a fixed byte would be no damage 1 time in 256
    for url in (f"/v1/objects/{object_id}", key_url("exposure/damaged")):
        reply = shared_server.request("GET", url, token="read")
        assert reply.status == 500 and reply.json()["error"] == "CorruptObject"
        assert object_id in reply.json()["detail"]  # what is damaged is still said
        assert_no_server_paths(shared_server, reply.body)
    assert str(path) in shared_server.log()  # the operator still learns where


def test_a_store_that_has_gone_is_reported_without_its_path(start, store_path):
    server = start("--workers", "1", cache_args=("--no-cache",))
    assert server.request("PUT", key_url("k"), body=b"v").status == 201
    with outage("store-renamed", store_path):
        for method, body in (("GET", None), ("PUT", b"w")):
            reply = server.request(method, key_url("k"), body=body)
            assert reply.status == 503, reply.body
            assert_no_server_paths(server, reply.body)


def test_public_healthz_says_status_and_role_and_details_need_a_token(shared_server):
    # A load balancer needs the status and the node's role and head (issue 12); PIDs and counts need a token.
    public = shared_server.request("GET", "/healthz", token=None)
    assert public.status == 200 and set(public.json()) == {"status", "role", "epoch", "head"}
    assert public.json()["status"] == "ok" and public.json()["role"] == "primary"
    wrong = shared_server.request("GET", "/healthz", headers={"Authorization": "Bearer nope"}, token=None)
    assert wrong.status == 200 and wrong.json() == public.json()
    detailed = shared_server.request("GET", "/healthz", token="read").json()
    assert detailed["status"] == "ok" and all(worker["pid"] for worker in detailed["workers"])


def test_no_answer_names_the_server_software_or_its_version(shared_server):
    big = os.urandom(9 << 20)  # over the worker's in-memory size: sent with sendfile
    shared_server.request("PUT", key_url("exposure/small"), body=b"small")
    with Store.open(shared_server.store) as store:
        big_id = store.put("exposure/big", big).version.hash
    replies = every_kind_of_answer(shared_server, big_id)
    for label, (_status, headers) in replies.items():
        server_header = headers.get("server", "")
        assert "aiohttp" not in server_header.lower() and "python" not in server_header.lower(), (label, server_header)


# ============================================================ S8: stored pages cannot run
@pytest.mark.parametrize("content_type", ["text/html", "image/svg+xml"])
def test_stored_active_content_is_sandboxed_and_not_sniffed(shared_server, content_type):
    page = b"<script>alert(document.cookie)</script>"
    key = f"exposure/page-{content_type.replace('/', '-')}"
    object_id = shared_server.request("PUT", key_url(key), body=page, headers={"Content-Type": content_type}).json()["hash"]
    for url in (key_url(key), f"/v1/objects/{object_id}", f"/v1/objects/{object_id}"):  # the last from the gateway's memory
        reply = shared_server.request("GET", url, token="read")
        assert reply.body == page
        assert reply.headers["Content-Security-Policy"] == "sandbox", url
        assert reply.headers["X-Content-Type-Options"] == "nosniff", url


def test_every_answer_says_nosniff(shared_server):
    big = os.urandom(9 << 20)
    with Store.open(shared_server.store) as store:
        big_id = store.put("exposure/big-nosniff", big).version.hash
    shared_server.request("PUT", key_url("exposure/small"), body=b"small")
    for label, (status, headers) in every_kind_of_answer(shared_server, big_id).items():
        assert headers.get("x-content-type-options") == "nosniff", (label, status, headers)


def every_kind_of_answer(server, big_id: str) -> dict[str, tuple[int, dict]]:
    """(status, lower-cased headers) of each way the gateway makes an answer."""
    small_url = key_url("exposure/small")
    small_id = server.request("GET", small_url, token="read").headers["ETag"].strip('"').partition("-")[2]
    answers = {}
    for label, method, path, headers, token in [
        ("key", "GET", small_url, {}, "read"),
        ("key head", "HEAD", small_url, {}, "read"),
        ("key range", "GET", small_url, {"Range": "bytes=0-1"}, "read"),
        ("key 304", "GET", small_url, {"If-None-Match": f'"{small_id}"'}, "read"),
        ("object relayed", "GET", f"/v1/objects/{small_id}", {"Cache-Control": "no-cache"}, "read"),
        ("object from memory", "GET", f"/v1/objects/{small_id}", {}, "read"),
        ("object sendfile", "GET", f"/v1/objects/{big_id}", {}, "read"),
        ("listing", "GET", "/v1/keys?prefix=exposure", {}, "read"),
        ("put", "PUT", small_url, {}, "write"),
        ("401", "GET", "/v1/log", {}, None),
        ("403", "PUT", small_url, {}, "read"),
        ("404 route", "GET", "/v1/nothing", {}, "read"),
        ("404 key", "GET", key_url("exposure/none"), {}, "read"),
        ("405", "DELETE", "/v1/log", {}, "write"),
        ("400", "GET", "/v1/keys/a?version=x", {}, "read"),
        ("healthz", "GET", "/healthz", {}, None),
        ("metrics", "GET", "/metrics", {}, "read"),
        ("openapi", "GET", "/openapi.json", {}, "read"),
    ]:
        body = b"small" if method == "PUT" else None
        reply = server.request(method, path, body=body, headers=headers, token=token)
        answers[label] = (reply.status, {name.lower(): value for name, value in reply.headers.items()})
    for label, raw in [("414", b"GET /v1/keys/" + b"k" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"),
                       ("431", b"GET /v1/log HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 10000 + b"\r\n\r\n"),
                       ("400 parse", b"GET /v1/log HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n")]:  # fmt: skip
        answers[label] = raw_answer(server, raw)
    return answers


def raw_answer(server, data: bytes) -> tuple[int, dict]:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(data)
        received = b""
        while b"\r\n\r\n" not in received:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
    head = received.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    headers = {}
    for line in head[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(head[0].split()[1]), headers

