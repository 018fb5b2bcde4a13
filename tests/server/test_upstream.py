"""The gateway's hop to a worker (upstream.py) when the worker dies mid-upload (S9: no traceback)."""

from __future__ import annotations

import asyncio
import gc
import socket
import struct

import pytest

from imstore.server.upstream import UpstreamError, UpstreamPool

pytestmark = pytest.mark.timeout(60)

CHUNK = 1 << 16
CHUNKS = 1024  # 64 MiB offered: far more than a unix socket buffers, so the send is still going when the worker dies


async def upload_to_a_worker_that_dies(socket_path: str, reset: bool) -> tuple[str | None, list[dict]]:
    """One streamed PUT to a fake worker that reads the head and some of the body, then its socket goes
    (as a SIGKILLed worker's does): (the error the gateway got, what asyncio reported on its own)."""
    loop = asyncio.get_running_loop()
    reported: list[dict] = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context))

    async def worker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(CHUNK)  # the upload is under way
        if reset:
            writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    async def body():
        for _ in range(CHUNKS):
            yield b"x" * CHUNK

    server = await asyncio.start_unix_server(worker, socket_path)
    pool = UpstreamPool(socket_path)
    error = None
    try:
        await pool.request("PUT", "/v1/keys/k", {"Content-Length": str(CHUNK * CHUNKS)}, body())
    except (UpstreamError, OSError) as exc:
        error = repr(exc)  # not the exception: its traceback would keep the tasks (and what they hold) alive
    finally:
        pool.close()
        server.close()
        await server.wait_closed()
    gc.collect()  # a task whose exception nobody retrieved reports it when it is collected
    await asyncio.sleep(0)
    return error, reported


@pytest.mark.parametrize("reset", [True, False], ids=["reset", "closed"])
def test_a_worker_dying_mid_upload_is_one_error_and_no_unretrieved_task_exception(tmp_path, reset):
    """Both halves of the exchange (sending the body, reading the answer) fail at once; the gateway
    must take one error and leave asyncio nothing to log as 'Task exception was never retrieved'."""
    error, reported = asyncio.run(upload_to_a_worker_that_dies(str(tmp_path / "worker.sock"), reset))
    assert error is not None  # the failure reaches the gateway, which answers 502 or retries
    assert [context.get("message") for context in reported] == [], reported
