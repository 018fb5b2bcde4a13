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


async def answer_before_the_body_ends(socket_path: str, ends_after_answer: bool) -> tuple[list[bool], bytes]:
    """A streamed (chunked) PUT to a fake worker that answers 200 with no body after the body's first piece, as
    an S3 part's worker does once its aws-chunked trailer is in (ends_after_answer False: after the whole body):
    (whether the body had been sent whole each time the pool took the connection back, what the worker got)."""
    head_read, received = asyncio.Event(), bytearray()

    async def worker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.extend(await reader.readuntil(b"\r\n\r\n"))
        received.extend(await reader.readuntil(b"first\r\n" if ends_after_answer else b"0\r\n\r\n"))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        while not received.endswith(b"0\r\n\r\n") and (piece := await reader.read(CHUNK)):
            received.extend(piece)

    sent_whole = [False]

    async def body():
        yield b"first"
        if ends_after_answer:  # the rest comes once the pool has read the answer (the client's last chunk, a moment late)
            await head_read.wait()
            yield b"last"
        sent_whole[0] = True

    server = await asyncio.start_unix_server(worker, socket_path)
    pool = UpstreamPool(socket_path)
    taken_back: list[bool] = []
    give_back, read_head = pool._give_back, pool._read_head
    pool._give_back = lambda connection: (taken_back.append(sent_whole[0]), give_back(connection))[1]

    async def read_head_then_tell(*args, **kwargs):
        response = await read_head(*args, **kwargs)
        head_read.set()
        return response

    pool._read_head = read_head_then_tell
    try:
        response = await pool.request("PUT", "/bench/k?partNumber=1", {}, body())
        assert response.status == 200
        for _ in range(100):  # let the sending task run on, if it still does
            await asyncio.sleep(0)
    finally:
        pool.close()
        server.close()
        await server.wait_closed()
    return taken_back, bytes(received)


@pytest.mark.parametrize("ends_after_answer", [True, False], ids=["body-ends-after-the-answer", "answer-after-the-body"])
def test_a_connection_goes_back_to_the_pool_only_after_its_whole_body_was_sent(tmp_path, ends_after_answer):
    """Handed back when the answer came, a connection whose body was still being sent carried the next
    request before that body's end: the worker read the request as body and reset it 10 s later."""
    taken_back, received = asyncio.run(answer_before_the_body_ends(str(tmp_path / "worker.sock"), ends_after_answer))
    assert all(taken_back), taken_back  # never taken back with the body's end still to be written
    assert taken_back == [True] or ends_after_answer  # a body sent whole, then answered: the connection is kept
    assert received.count(b"PUT ") == 1
