"""Memory answers written as prepared bytes (wire.py): the same answer a worker gives, on every kind of connection."""

from __future__ import annotations

import http.client
import os
import re
import socket
import ssl
import time

import pytest

from .conftest import key_url
from .test_http import self_signed_certificate

pytestmark = pytest.mark.timeout(120)

FROM_WORKER_ONLY = {"date", "x-imstore-worker"}


def raw_exchange(port: int, payload: bytes, answers: int, timeout: float = 10, wait_close: float = 0.5) -> tuple[list, bool]:
    """Send raw bytes, read `answers` HTTP answers (Content-Length framed) as (status line, headers, body); also whether
    the server closed the connection within wait_close seconds after them (the fixture's keep-alive allowance is 2 s)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as connection:
        connection.sendall(payload)
        buffer, parsed = b"", []
        deadline = time.monotonic() + timeout
        while len(parsed) < answers and time.monotonic() < deadline:
            head_end = buffer.find(b"\r\n\r\n")
            if head_end >= 0:
                lines = buffer[:head_end].decode("latin-1").split("\r\n")
                headers = {name.lower(): value for name, _, value in (line.partition(": ") for line in lines[1:])}
                end = head_end + 4 + int(headers["content-length"])
                if len(buffer) >= end:
                    parsed.append((lines[0], headers, buffer[head_end + 4 : end]))
                    buffer = buffer[end:]
                    continue
            chunk = connection.recv(65536)
            if not chunk:
                break
            buffer += chunk
        connection.settimeout(wait_close)
        try:
            closed = connection.recv(1) == b""
        except TimeoutError:
            closed = False
        return parsed, closed


def request_bytes(server, target: str, version: str = "HTTP/1.1", extra: str = "") -> bytes:
    return (f"GET {target} {version}\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {server.read_token}\r\n{extra}\r\n").encode()


def metric(server, pattern: str) -> int:
    text = server.request("GET", "/metrics", token="read").body.decode()
    found = re.search(pattern, text, re.M)
    return int(found.group(1)) if found else 0


def stored(server, key: str) -> bytes:
    body = os.urandom(4096)
    assert server.request("PUT", key_url(key), body=body).status == 201
    return body


def test_pipelined_memory_answers_are_whole_in_order_and_match_the_workers(shared_server):
    body, other = stored(shared_server, "wire/a"), stored(shared_server, "wire/b")
    first, _ = raw_exchange(shared_server.port, request_bytes(shared_server, key_url("wire/a")), 1)  # from a worker, then kept
    assert "x-imstore-worker" in first[0][1]
    raw_exchange(shared_server.port, request_bytes(shared_server, key_url("wire/b")), 1)
    hits = metric(shared_server, r"^imstore_gateway_key_memory_hits_total (\d+)$")
    payload = b"".join(request_bytes(shared_server, key_url(key)) for key in ("wire/a", "wire/b", "wire/a"))
    answers, closed = raw_exchange(shared_server.port, payload, 3)
    assert [data for _, _, data in answers] == [body, other, body] and not closed
    assert metric(shared_server, r"^imstore_gateway_key_memory_hits_total (\d+)$") == hits + 3
    status, headers, _ = answers[0]
    assert status == "HTTP/1.1 200 OK" and "x-imstore-worker" not in headers and headers["date"].endswith(" GMT")
    worker_headers = {name: value for name, value in first[0][1].items() if name not in FROM_WORKER_ONLY}
    assert {name: value for name, value in headers.items() if name not in FROM_WORKER_ONLY} == worker_headers
    assert headers["server"] == "imstore" and headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize(("version", "extra"), [("HTTP/1.0", ""), ("HTTP/1.1", "Connection: close\r\n")])
def test_a_memory_answer_to_a_client_that_does_not_keep_alive_closes_the_connection(shared_server, version, extra):
    body = stored(shared_server, f"wire/{version}{bool(extra)}")
    target = key_url(f"wire/{version}{bool(extra)}")
    raw_exchange(shared_server.port, request_bytes(shared_server, target), 1)  # kept
    hits = metric(shared_server, r"^imstore_gateway_key_memory_hits_total (\d+)$")
    answers, closed = raw_exchange(shared_server.port, request_bytes(shared_server, target, version, extra), 1, wait_close=1.5)
    assert answers[0][0].endswith("200 OK") and answers[0][2] == body and closed
    assert metric(shared_server, r"^imstore_gateway_key_memory_hits_total (\d+)$") == hits + 1


def test_memory_answers_are_counted_and_logged_like_any_answer(shared_server):
    body = stored(shared_server, "wire/count")
    object_id = shared_server.request("GET", key_url("wire/count"), token="read").headers["ETag"].strip('"').partition("-")[2]
    assert shared_server.request("GET", f"/v1/objects/{object_id}", token="read").body == body  # kept by id
    pattern = r'^imstore_http_requests_total\{route="ROUTE",method="GET",status="200"\} (\d+)$'
    before = {route: metric(shared_server, pattern.replace("ROUTE", route)) for route in ("key", "object")}
    assert shared_server.request("GET", key_url("wire/count"), token="read").body == body
    assert shared_server.request("GET", f"/v1/objects/{object_id}", token="read").body == body
    after = {route: metric(shared_server, pattern.replace("ROUTE", route)) for route in ("key", "object")}
    assert after == {"key": before["key"] + 1, "object": before["object"] + 1}
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and shared_server.log().count(f"GET /v1/objects/{object_id} 200 4096B") < 2:
        time.sleep(0.05)
    assert re.search(rf"GET /v1/objects/{object_id} 200 4096B [\d.]+ms worker=memory", shared_server.log())


def test_a_memory_answer_over_tls(start, tmp_path):
    cert, key = self_signed_certificate(tmp_path)
    server = start("--workers", "1", "--tls-cert", str(cert), "--tls-key", str(key), tls=True)
    body = os.urandom(4096)
    context = ssl.create_default_context(cafile=str(cert))
    context.check_hostname = False
    connection = http.client.HTTPSConnection("127.0.0.1", server.port, context=context, timeout=30)  # keep-alive: the wire path
    answers = []
    try:
        for method, data in (("PUT", body), ("GET", None), ("GET", None), ("GET", None)):
            connection.request(method, key_url("tls/a"), body=data, headers={"Authorization": f"Bearer {server.write_token}"})
            reply = connection.getresponse()
            answers.append((reply.status, dict(reply.headers), reply.read()))
    finally:
        connection.close()
    assert [status for status, _, _ in answers] == [201, 200, 200, 200]
    assert answers[1][2] == answers[2][2] == answers[3][2] == body
    assert "X-Imstore-Worker" in answers[1][1] and "X-Imstore-Worker" not in answers[3][1]  # the last ones came from memory
