"""`imstore --remote URL get --batch` / `cat --batch`: one pipelined connection, the same frames as locally."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from batchprocess import read_line, running

from imstore import Store
from imstore.hashing import hash_bytes

pytestmark = pytest.mark.timeout(120)

IMSTORE = [sys.executable, "-m", "imstore"]
BINARY = b"a\nb\x00\x00\r\n\xff end"


def remote_options(server, tmp_path: Path) -> list[str]:
    """The global options that point the CLI at server with its read token (in a 0600 file)."""
    token = tmp_path / "token"
    token.write_text(server.read_token)
    token.chmod(0o600)
    return ["--remote", server.url, "--token-file", str(token)]


def batch(server, tmp_path: Path, *args: str, stdin: bytes, remote: bool = True) -> subprocess.CompletedProcess:
    where = remote_options(server, tmp_path) if remote else ["--store", str(server.store)]
    return subprocess.run([*IMSTORE, *where, *args], input=stdin, capture_output=True, timeout=60)


@pytest.fixture
def filled(shared_server):
    with Store.open(shared_server.store) as store:
        store.put("remote key with spaces", BINARY)
        store.put("remote key with spaces", b"v2")
        store.put("remote/gone", b"x")
        store.delete("remote/gone")
        store.put("remote/empty", b"")
    return shared_server


@pytest.mark.parametrize("mode", ["--batch", "--batch-check"])
def test_remote_get_batch_gives_the_same_bytes_as_local(filled, tmp_path, mode):
    lines = b"remote key with spaces\t1\nremote key with spaces\nremote/gone\nremote/gone\t1\nnever\nremote/empty\n\nx\t2\t3\n"
    remote = batch(filled, tmp_path, "get", mode, stdin=lines * 3)  # repeats: some answers come from the gateway's memory
    local = batch(filled, tmp_path, "get", mode, stdin=lines * 3, remote=False)
    assert remote.returncode == local.returncode == 0, remote.stderr + local.stderr
    assert remote.stdout == local.stdout
    assert b"remote/gone\tdeleted\n" in remote.stdout and b"never\tmissing\n" in remote.stdout
    if mode == "--batch":
        assert f"remote key with spaces\t1\t{hash_bytes(BINARY)}\t{len(BINARY)}\n".encode() + BINARY + b"\n" in remote.stdout


def test_remote_cat_batch_gives_the_same_bytes_as_local(filled, tmp_path):
    object_id = hash_bytes(BINARY)
    lines = f"{object_id}\n{object_id[:12]}\n{'0' * 64}\nnot-hex\n".encode()
    remote = batch(filled, tmp_path, "cat", "--batch", stdin=lines)
    local = batch(filled, tmp_path, "cat", "--batch", stdin=lines, remote=False)
    assert remote.returncode == 0, remote.stderr
    assert remote.stdout == local.stdout
    assert remote.stdout.startswith(f"{object_id}\t{len(BINARY)}\n".encode() + BINARY + b"\n")


def test_remote_json_lines(filled, tmp_path):
    remote = batch(filled, tmp_path, "--json", "get", "--batch-check", stdin=b"remote/empty\nnever\n")
    local = batch(filled, tmp_path, "--json", "get", "--batch-check", stdin=b"remote/empty\nnever\n", remote=False)
    assert remote.returncode == 0 and remote.stdout == local.stdout and b'"status": "missing"' in remote.stdout


def test_a_damaged_object_stops_a_remote_batch_with_exit_5(shared_server, tmp_path):
    body = os.urandom(5000)
    with Store.open(shared_server.store) as store:  # no read cache: the workers have no copy
        store.put("remote/fine", b"fine")
        store.put("remote/damaged", body)
    object_id = hash_bytes(body)
    path = Path(shared_server.store) / "objects" / object_id[:2] / object_id[2:]
    path.chmod(0o644)
    raw = bytearray(path.read_bytes())
    raw[2500] ^= 0x01
    path.write_bytes(bytes(raw))
    result = batch(shared_server, tmp_path, "get", "--batch", stdin=b"remote/fine\nremote/damaged\nremote/fine\n")
    assert result.returncode == 5, result.stderr
    assert result.stdout == f"remote/fine\t1\t{hash_bytes(b'fine')}\t4\n".encode() + b"fine\n"


def connected(pid: int, port: int) -> bool:
    """Does the process hold an open (ESTABLISHED) connection to the port?"""
    try:
        children = psutil.Process(pid).net_connections(kind="tcp")
    except psutil.NoSuchProcess:
        return False
    return any(c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED for c in children)


def test_remote_batch_sees_another_process_write_and_outlives_the_servers_idle_timeout(shared_server, tmp_path):
    with running([*IMSTORE, *remote_options(shared_server, tmp_path), "get", "--batch-check"]) as process:
        deadline = time.monotonic() + 60
        for _ in range(2):  # the second answer may come from the gateway's memory
            process.stdin.write(b"remote/later\n")
            process.stdin.flush()
            assert read_line(process, deadline) == b"remote/later\tmissing\n"
        with Store.open(shared_server.store) as other:
            first = other.put("remote/later", b"one").version
        process.stdin.write(b"remote/later\n")
        process.stdin.flush()
        assert read_line(process, deadline) == f"remote/later\t1\t{first.hash}\t3\n".encode()
        # The shared server closes idle connections after 2 s (--client-timeout): the next line must reconnect.
        while connected(process.pid, shared_server.port):
            assert time.monotonic() < deadline, "the server never closed the idle connection"
            time.sleep(0.1)
        with Store.open(shared_server.store) as other:
            second = other.put("remote/later", b"two!").version
        process.stdin.write(b"remote/later\n")
        process.stdin.close()
        assert read_line(process, deadline) == f"remote/later\t2\t{second.hash}\t4\n".encode()
        assert process.wait(30) == 0


def test_large_remote_bodies_are_spooled_verified_and_streamed(shared_server, tmp_path, monkeypatch):
    from imstore.server import pipeline
    from tests.conftest import run_cli_in_process

    monkeypatch.setattr(pipeline, "WHOLE", 100)  # every body here is spooled to a temp file
    big = os.urandom(300_000)  # past the gateway's buffered size too: relayed or sent with sendfile
    with Store.open(shared_server.store) as store:
        store.put("remote/big", big)
    result = run_cli_in_process([*remote_options(shared_server, tmp_path), "get", "--batch"],
                                stdin=b"remote/big\nremote/big\n")  # fmt: skip
    assert result.code == 0, result.stderr
    frame = f"remote/big\t1\t{hash_bytes(big)}\t{len(big)}\n".encode() + big + b"\n"
    assert result.stdout == frame * 2


def test_a_remote_batch_that_fails_exits_without_waiting_for_more_input(shared_server, tmp_path):
    body = os.urandom(5000)
    with Store.open(shared_server.store) as store:
        store.put("remote/damaged-now", body)
    object_id = hash_bytes(body)
    path = Path(shared_server.store) / "objects" / object_id[:2] / object_id[2:]
    path.chmod(0o644)
    path.write_bytes(body[:-1] + bytes([body[-1] ^ 1]))
    with running([*IMSTORE, *remote_options(shared_server, tmp_path), "get", "--batch"]) as process:
        process.stdin.write(b"remote/damaged-now\n")
        process.stdin.flush()  # stdin stays open: the script is waiting for this answer
        assert process.wait(30) == 5
        assert process.stdout.read() == b""
