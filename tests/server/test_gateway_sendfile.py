"""The gateway sending an object's file itself: a failure part-way must cut the connection, never add bytes."""

from __future__ import annotations

import asyncio
import errno
import os
from types import SimpleNamespace
from urllib.parse import quote

import pytest
from aiohttp import web

from imstore.server import gateway as gateway_module
from imstore.server import run_event_loop
from imstore.server.gateway import Gateway, GatewayConfig
from imstore.server.upstream import PIECE

pytestmark = pytest.mark.timeout(60)


class _FailingSecondRead:
    """A file whose second read fails with EIO (a bad sector), like a damaged disk under the pack."""

    def __init__(self, path, mode="rb"):
        self._file = open(path, mode)  # noqa: SIM115 (closed by __exit__)
        self._reads = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._file.close()

    def fileno(self):
        return self._file.fileno()

    def seek(self, offset, whence=0):
        return self._file.seek(offset, whence)

    def read(self, size=-1):
        self._reads += 1
        if self._reads == 2:
            raise OSError(errno.EIO, "Input/output error")
        return self._file.read(size)


def test_a_read_error_part_way_through_a_sent_file_cuts_the_connection(tmp_path, monkeypatch):
    data = os.urandom(PIECE + 100)
    path = tmp_path / "pack"
    path.write_bytes(data)
    monkeypatch.setattr(gateway_module, "open", _FailingSecondRead, raising=False)
    pytest.importorskip("uvloop")  # run_event_loop then runs uvloop, which has no loop.sendfile: the gateway copies the file
    supervisor = SimpleNamespace(runtime_dir=str(tmp_path))  # only its private directory is asked for
    gateway = Gateway(GatewayConfig(store_root=str(tmp_path)), supervisor, None)

    async def dispatch(request, state):
        where = f"0 {len(data)} {quote(str(path))}"
        return await gateway._sendfile(request, 200, {"Content-Type": "application/octet-stream"}, where, state)

    gateway._dispatch = dispatch

    async def scenario() -> tuple[bytes, bool]:
        runner = web.ServerRunner(web.Server(gateway.handle))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n")
            await writer.drain()
            received, closed = b"", False
            for _ in range(1000):  # to EOF (the server must close the connection), or until nothing more comes
                try:
                    piece = await asyncio.wait_for(reader.read(1 << 20), 3)
                except TimeoutError:
                    break
                if not piece:
                    closed = True
                    break
                received += piece
            writer.close()
            return received, closed
        finally:
            await runner.cleanup()

    received, closed = run_event_loop(scenario())
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and f"Content-Length: {len(data)}".encode() in head
    assert b"HTTP/1.1 500" not in body  # no second answer inside the first one's body
    assert len(body) < len(data) and data.startswith(body)
    assert closed

