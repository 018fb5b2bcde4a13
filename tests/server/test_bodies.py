"""The body pump (bodies.streamed_body): a task on the loop reads a request body and hands its pieces to the
pool thread that iterates over it. Driven here with aiohttp's own StreamReader, fed as a connection would."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from aiohttp.streams import StreamReader

from imstore.errors import BodyIncomplete
from imstore.server import bodies

PIECE = 256 << 10


class _Protocol:
    """What StreamReader asks of its connection: whether reading is paused, and to pause or resume it."""

    connected = True

    def __init__(self):
        self._reading_paused = False

    def pause_reading(self):
        self._reading_paused = True

    def resume_reading(self, resume_parser=True):
        self._reading_paused = False


def _reader() -> StreamReader:
    return StreamReader(_Protocol(), 2**16, loop=asyncio.get_running_loop())


async def _until(condition, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the condition did not come true"
        await asyncio.sleep(0.01)


def run(coroutine):
    asyncio.run(asyncio.wait_for(coroutine, 60))


def test_every_piece_reaches_the_thread_in_order_and_the_body_ends():
    async def main():
        content = _reader()
        sent = [bytes([n]) * (1000 + n) for n in range(50)]
        async with bodies.streamed_body(content) as chunks:
            taken = asyncio.ensure_future(asyncio.to_thread(lambda: b"".join(chunks)))
            for piece in sent:
                content.feed_data(piece)
                await asyncio.sleep(0)
            content.feed_eof()
            assert await taken == b"".join(sent)

    run(main())


def test_the_loop_reads_at_most_pump_ahead_beyond_the_thread(monkeypatch):
    monkeypatch.setattr(bodies, "PUMP_AHEAD", 2 << 20)

    async def main():
        content = _reader()
        pump = bodies._BodyPump(content)
        go_on = threading.Event()
        received = []

        def consume():
            pieces = iter(pump)
            received.append(next(pieces))
            go_on.wait(30)  # a slow disk: the thread takes nothing for a while
            received.extend(pieces)

        consumer = asyncio.ensure_future(asyncio.to_thread(consume))
        total = 40
        for _ in range(total):  # a piece at a time, as a connection delivers them
            content.feed_data(b"x" * PIECE)
            for _ in range(3):
                await asyncio.sleep(0)
        content.feed_eof()
        await _until(lambda: pump.paused)
        await asyncio.sleep(0.1)  # the pump stays paused: nothing more is read while the thread waits
        assert pump.queued <= bodies.PUMP_AHEAD + PIECE
        assert content.total_bytes - pump.queued - len(received[0]) > 0  # the rest still waits in aiohttp's buffer
        go_on.set()
        await consumer
        await pump.close()
        assert sum(map(len, received)) == total * PIECE

    run(main())


def test_a_body_that_stops_arriving_raises_in_the_thread(monkeypatch):
    monkeypatch.setattr(bodies, "BODY_IDLE_TIMEOUT", 0.3)

    async def main():
        content = _reader()
        async with bodies.streamed_body(content) as chunks:
            content.feed_data(b"first")
            with pytest.raises(BodyIncomplete, match="stopped arriving"):
                await asyncio.to_thread(lambda: list(chunks))

    run(main())


def test_a_body_that_breaks_off_raises_in_the_thread():
    async def main():
        content = _reader()
        async with bodies.streamed_body(content) as chunks:
            content.feed_data(b"first")
            content.set_exception(ConnectionResetError("reset by peer"))
            with pytest.raises(BodyIncomplete, match="broke off"):
                await asyncio.to_thread(lambda: list(chunks))

    run(main())


def test_after_the_block_the_rest_of_the_body_can_be_read_by_aiohttp():
    """A handler may answer before its body ends (an S3 aws-chunked body is decoded to its trailer before the HTTP
    body's last chunk); aiohttp then reads what is left. A read of the pump still waiting then made that fail
    ("readany() called while another coroutine is already waiting"): aws-cli saw 503s."""

    async def main():
        content = _reader()
        async with bodies.streamed_body(content) as chunks:
            content.feed_data(b"decoded to its end")
            assert await asyncio.to_thread(lambda: next(chunks)) == b"decoded to its end"
            await asyncio.sleep(0.05)  # the pump waits for more in readany()
        asyncio.get_running_loop().call_later(0.05, content.feed_data, b"0\r\n\r\n")
        assert await content.readany() == b"0\r\n\r\n"  # at once, in this task, as aiohttp does after a handler

    run(main())


def test_a_thread_still_reading_when_the_block_ends_stops_at_once(monkeypatch):
    monkeypatch.setattr(bodies, "BODY_IDLE_TIMEOUT", 30)

    async def main():
        content = _reader()
        started = time.monotonic()
        async with bodies.streamed_body(content) as chunks:
            reading = asyncio.ensure_future(asyncio.to_thread(lambda: list(chunks)))
            await asyncio.sleep(0.05)
        with pytest.raises(BodyIncomplete, match="broke off"):
            await reading
        assert time.monotonic() - started < 10  # not the idle timeout's 30 s

    run(main())


def test_nothing_is_read_before_a_thread_asks():
    """A handler waiting for a pool thread (all busy) holds no bytes of its body; the thread then gets all of them."""

    async def main():
        content = _reader()
        pump = bodies._BodyPump(content)
        for _ in range(8):
            content.feed_data(b"y" * PIECE)
        await asyncio.sleep(0.1)
        assert pump.task is None and pump.queued == 0
        content.feed_eof()
        assert await asyncio.to_thread(lambda: sum(map(len, pump))) == 8 * PIECE
        await pump.close()

    run(main())


def test_a_thread_that_begins_after_the_block_ended_stops_at_once():
    async def main():
        content = _reader()
        async with bodies.streamed_body(content) as chunks:
            pass  # the handler was cancelled while its thread was still queued
        content.feed_data(b"never read")
        with pytest.raises(BodyIncomplete, match="broke off"):
            await asyncio.to_thread(lambda: list(chunks))
        assert await content.readany() == b"never read"

    run(main())
