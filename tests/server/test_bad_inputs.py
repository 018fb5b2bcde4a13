"""HTTP bad inputs: short bodies, hang-ups mid-upload, smuggling-shaped headers, slow clients. Nothing written, server fine."""

from __future__ import annotations

import socket
import time

import pytest

from .conftest import key_url

pytestmark = pytest.mark.timeout(120)


def connect(server, timeout: float = 10) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=timeout)


def head(server, key: str, extra: str) -> bytes:
    return (
        f"PUT {key_url(key)} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {server.write_token}\r\n{extra}\r\n"
    ).encode()


def read_reply(sock: socket.socket) -> bytes:
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    return received


def wait_for_log(server, text: str, timeout: float = 20) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in server.log().splitlines():
            if text in line:
                return line
        time.sleep(0.05)
    raise AssertionError(f"{text!r} never logged:\n{server.log()[-3000:]}")


def assert_no_version(server, key: str) -> None:
    assert server.request("GET", "/v1/history/" + key_url(key)[len("/v1/keys/"):], token="read").status == 404
    assert server.health()["status"] == "ok"


@pytest.mark.parametrize("declared, sent", [(1000, 10), (5_000_000, 300_000)])
def test_hang_up_before_the_declared_length_leaves_no_version(shared_server, declared, sent):
    key = f"bad/short-{declared}"
    with connect(shared_server) as sock:
        sock.sendall(head(shared_server, key, f"Content-Length: {declared}\r\n") + b"z" * sent)
        time.sleep(0.2)  # let the bytes reach the worker before the hang-up (the outcome is checked below, not timed)
    wait_for_log(shared_server, f"PUT {key_url(key)} ")
    assert_no_version(shared_server, key)


def test_hang_up_mid_chunked_upload_leaves_no_version(shared_server):
    key = "bad/chunked-hangup"
    with connect(shared_server) as sock:
        sock.sendall(head(shared_server, key, "Transfer-Encoding: chunked\r\n") + b"10000\r\n" + b"c" * 0x10000 + b"\r\n" + b"400\r\nabc")
        time.sleep(0.2)
    wait_for_log(shared_server, f"PUT {key_url(key)} ")
    assert_no_version(shared_server, key)


@pytest.mark.parametrize(
    "extra",
    [
        "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
        "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
        "Content-Length: -5\r\n",
        "Content-Length: 5\r\nContent-Length: 6\r\n",
        "Content-Length: 0x5\r\n",
        "Transfer-Encoding: gzip, chunked, identity\r\n",
    ],
)
def test_smuggling_shaped_headers_are_refused(shared_server, extra):
    key = "bad/smuggle"
    with connect(shared_server) as sock:
        sock.sendall(head(shared_server, key, extra) + b"5\r\nhello\r\n0\r\n\r\n")
        reply = read_reply(sock)
    assert reply[:12] in (b"HTTP/1.1 400", b"HTTP/1.0 400"), reply[:200]
    assert b"Content-Type: application/problem+json" in reply
    assert_no_version(shared_server, key)


def test_a_silent_client_mid_body_is_cut_off_and_writes_nothing(shared_server):
    key = "bad/stalled"
    with connect(shared_server, timeout=30) as sock:
        sock.sendall(head(shared_server, key, "Content-Length: 500000\r\n") + b"s" * 1000)
        reply = read_reply(sock)  # --client-timeout 2: the gateway gives up and says so, or just closes
    assert reply == b"" or reply.startswith(b"HTTP/1.1 408"), reply[:200]
    assert_no_version(shared_server, key)


@pytest.mark.timeout(180)
def test_200_slow_sockets_do_not_stop_normal_requests_and_are_closed(shared_server):
    slow = []
    try:
        for number in range(200):
            sock = connect(shared_server, timeout=30)
            sock.sendall(f"GET /v1/log HTTP/1.1\r\nHost: x\r\nX-Slow-{number}: ".encode())  # headers never finished
            slow.append(sock)
        for _ in range(10):
            assert shared_server.request("GET", "/v1/log", token="read", timeout=10).status == 200
        assert shared_server.request("PUT", key_url("bad/while-slow"), body=b"fine").status == 201
        deadline = time.monotonic() + 60
        open_count = sum(1 for sock in slow if not closed_by_server(sock, deadline))  # --client-timeout 2
        assert open_count == 0
    finally:
        for sock in slow:
            sock.close()


def closed_by_server(sock: socket.socket, deadline: float) -> bool:
    """Read until the server closes the connection (True) or the deadline passes (False)."""
    while time.monotonic() < deadline:
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            if sock.recv(65536) == b"":
                return True
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False
    return False
