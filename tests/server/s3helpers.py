"""A real `imstore serve --s3-port` for S3 client tests, and boto3 clients signed with its keys."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from imstore import Store
from imstore.server.auth import TokenStore

from .conftest import Server, assert_no_workers_left, free_port, start_server

boto3 = pytest.importorskip("boto3", reason="boto3 comes with the test extras")
from botocore.config import Config  # noqa: E402


@dataclass
class S3Server:
    server: Server
    port: int
    write_key: tuple[str, str]
    read_key: tuple[str, str]
    scheme: str = "http"
    verify: str | bool = False

    @property
    def endpoint(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def client(self, key: str = "write", **config):
        access_key_id, secret = self.write_key if key == "write" else self.read_key
        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=access_key_id, aws_secret_access_key=secret,
                            region_name="us-east-1", verify=self.verify,
                            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}, **config))  # fmt: skip


def start_s3(root: Path, *args: str, tls: tuple[Path, Path] | None = None, env: dict | None = None) -> S3Server:
    store = root / "store"
    Store.init(store)[0].close()
    tokens = TokenStore(store)
    write_key, read_key = tokens.create_s3("s3w", "write"), tokens.create_s3("s3r", "read")
    port = free_port()
    tls_args = ("--tls-cert", str(tls[0]), "--tls-key", str(tls[1])) if tls else ()
    server = start_server(store, root / "serve.log", "--workers", "2", "--s3-port", str(port), *tls_args, *args, tls=bool(tls), env=env)
    return S3Server(server, port, write_key, read_key, "https" if tls else "http", str(tls[0]) if tls else False)


def stop_s3(s3: S3Server) -> None:
    if s3.server.process.poll() is None:
        s3.server.process.kill()
        s3.server.process.wait()
    assert_no_workers_left(s3.server.store)
