"""What `imstore serve` says when it starts: the port it bound (also for --port 0) and token files others can read."""

from __future__ import annotations

import re
import signal
import subprocess
import time

import pytest

from imstore.server.auth import TokenStore

from .conftest import IMSTORE

pytestmark = pytest.mark.timeout(120)


def start_and_read_until(command: list[str], log_path, pattern: str, timeout: float = 60):
    """Start serve, wait (polling, bounded) for pattern in its output; returns (process, match)."""
    log = open(log_path, "wb")
    process = subprocess.Popen(command, stdout=log, stderr=log)
    log.close()
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / 0.02) + 1):
        found = re.search(pattern, log_path.read_text("utf-8", "replace"))
        if found or process.poll() is not None or time.monotonic() > deadline:
            return process, found
        time.sleep(0.02)
    return process, None


def stop(process: subprocess.Popen) -> int:
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


def test_port_0_prints_the_port_it_bound(store_path, tmp_path):
    import http.client

    log_path = tmp_path / "serve.log"
    command = [*IMSTORE, "--store", str(store_path), "serve", "--port", "0", "--workers", "1"]
    process, found = start_and_read_until(command, log_path, r"listening on http://127\.0\.0\.1:(\d+) ")
    try:
        assert found, log_path.read_text()
        port = int(found.group(1))
        assert port != 0
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.request("GET", "/healthz")
        assert connection.getresponse().status == 200
    finally:
        assert stop(process) == 0


def test_serve_warns_about_a_token_file_others_can_read(store_path, tmp_path):
    TokenStore(store_path).create("w", "write")
    tokens = store_path / "tokens"
    tokens.chmod(0o644)
    log_path = tmp_path / "serve.log"
    command = [*IMSTORE, "--store", str(store_path), "serve", "--port", "0", "--workers", "1"]
    process, found = start_and_read_until(command, log_path, r"listening on")
    try:
        assert found, log_path.read_text()
        text = log_path.read_text()
        assert f"{tokens} can be read by other users (mode 0644)" in text and "chmod 600" in text, text
    finally:
        assert stop(process) == 0


def test_the_warning_goes_through_warn_for_a_token_file_given_to_serve(store_path, tmp_path):
    """GatewayConfig.token_file (what the CLI passes for --token-file): checked before anything starts."""
    import asyncio

    from imstore.errors import UsageError
    from imstore.server.gateway import GatewayConfig, serve

    token_file = tmp_path / "token"
    token_file.write_text("imst_x\n")
    token_file.chmod(0o640)
    warnings: list[str] = []
    config = GatewayConfig(str(store_path), host="192.0.2.1", token_file=str(token_file))  # no token: refused after the check

    with pytest.raises(UsageError):
        asyncio.run(serve(config, info=lambda _text: None, warn=warnings.append))
    assert warnings == [f"the token file {token_file} can be read by other users (mode 0640): anyone who reads it can use"
                        f" the token. Make it private: chmod 600 {token_file}"]  # fmt: skip
    token_file.chmod(0o600)
    warnings.clear()
    with pytest.raises(UsageError):
        asyncio.run(serve(config, info=lambda _text: None, warn=warnings.append))
    assert warnings == []
