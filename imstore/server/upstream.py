"""A lean HTTP/1.1 client for the gateway's hop to its workers over unix sockets.

The workers are our own aiohttp servers, which answer with a Content-Length (or
no body), except a listing page, which streams out chunked; so a small client with
a keep-alive pool does this hop at a fraction of aiohttp.ClientSession's cost per
request (measured: about 1.5x the requests/s of a trivial proxy). Any failure on a
connection closes it, so a half-sent body can never look complete to a worker, and
a chunked answer that breaks off is an error, never a shorter answer.
"""

from __future__ import annotations

import asyncio
import errno
import time
from collections import deque
from collections.abc import AsyncIterator, Callable

__all__ = ["UpstreamPool", "UpstreamResponse", "UpstreamError", "NotConnected", "WorkerBusy"]

HEAD_LIMIT = 256 << 10
PIECE = 1 << 20


class UpstreamError(Exception):
    """The worker could not be reached or broke the exchange off."""


class NotConnected(UpstreamError):
    """No connection was made: nothing of the request reached the worker, so any request may go to another."""


class WorkerBusy(NotConnected):
    """The worker's listen queue stayed full for the whole wait: back-pressure, not a failure."""


class _Connection:
    __slots__ = ("reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader = reader
        self.writer = writer

    def close(self) -> None:
        self.writer.transport.abort()


class UpstreamResponse:
    """Status and headers of a worker's answer; the body is read with read() or pieces()."""

    def __init__(self, pool: UpstreamPool, connection: _Connection, status: int, headers: list[tuple[str, str]], length: int | None,
                 keep_alive: bool):
        self.pool = pool
        self.status = status
        self.headers = headers
        self.content_length = length
        self._connection: _Connection | None = connection
        self._remaining = 0
        self._keep_alive = keep_alive
        self.chunked = False  # Transfer-Encoding: chunked (content_length is None)

    def header(self, name: str) -> str | None:
        lowered = name.lower()
        return next((value for key, value in self.headers if key.lower() == lowered), None)

    async def read(self) -> bytes:
        if self._connection is None:
            return b""
        if self.chunked:
            return b"".join([piece async for piece in self.pieces()])
        try:
            data = await self._connection.reader.readexactly(self._remaining)
        except (OSError, asyncio.IncompleteReadError) as exc:
            self.release()
            raise UpstreamError(f"the worker broke off its answer: {exc}") from None
        self._remaining = 0
        self._done()
        return data

    async def pieces(self) -> AsyncIterator[bytes]:
        if self.chunked:
            async for piece in self._chunks():
                yield piece
            return
        while self._connection is not None and self._remaining > 0:
            try:
                piece = await self._connection.reader.read(min(PIECE, self._remaining))
            except OSError as exc:
                self.release()
                raise UpstreamError(f"the worker broke off its answer: {exc}") from None
            if not piece:
                self.release()
                raise UpstreamError("the worker closed the connection mid-answer")
            self._remaining -= len(piece)
            if self._remaining == 0:
                self._done()
            yield piece

    async def _chunks(self) -> AsyncIterator[bytes]:
        """The pieces of a chunked body; its end (the last chunk and the trailers) hands the connection back."""
        for _ in range(1 << 40):  # bounded by the body: every round reads a chunk or ends
            connection = self._connection
            if connection is None:
                return
            reader = connection.reader
            try:
                size_line = await reader.readuntil(b"\r\n")
                size = int(size_line.split(b";", 1)[0].strip(), 16)
                if size < 0:
                    raise ValueError("a negative chunk size")
                if size == 0:
                    while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers, if any, up to the empty line
                        pass
                    self._done()
                    return
                while size > 0:
                    piece = await reader.read(min(PIECE, size))
                    if not piece:
                        raise asyncio.IncompleteReadError(b"", size)
                    size -= len(piece)
                    yield piece
                if await reader.readexactly(2) != b"\r\n":
                    raise ValueError("a chunk does not end in CRLF")
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
                self.release()
                raise UpstreamError(f"the worker broke off its answer: {type(exc).__name__}: {exc}") from None

    def _done(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            if self._keep_alive:
                self.pool._give_back(connection)
            else:
                connection.close()

    def release(self) -> None:
        """Drop the connection unless the body was read to its end."""
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()


class UpstreamPool:
    """Keep-alive connections to one worker's unix socket."""

    def __init__(self, socket_path: str, idle_limit: int = 128, connect_wait: float = 10.0):
        self.socket_path = socket_path
        self.idle_limit = idle_limit
        self.connect_wait = connect_wait  # how long a full listen queue is waited out before WorkerBusy
        self._idle: deque[_Connection] = deque()

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()

    def _give_back(self, connection: _Connection) -> None:
        if len(self._idle) < self.idle_limit and not connection.reader.at_eof():
            self._idle.append(connection)
        else:
            connection.close()

    async def _connect(self, wanted: Callable[[], bool] | None = None) -> _Connection:
        """A pooled connection, or a new one. A full listen queue (EAGAIN: the worker is behind on
        accepting) is back-pressure: wait for room, up to connect_wait, while wanted() says the worker
        is still in rotation. Raises NotConnected (WorkerBusy after the wait): nothing was sent."""
        while self._idle:
            connection = self._idle.pop()
            if not connection.reader.at_eof() and not connection.writer.is_closing():
                return connection
            connection.close()
        deadline = None
        delay = 0.001
        for _ in range(100_000):  # bounded by the deadline long before this count
            try:
                reader, writer = await asyncio.open_unix_connection(self.socket_path, limit=HEAD_LIMIT)
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK):
                    raise NotConnected(f"cannot connect to the worker: {exc.strerror or exc}") from None
                now = time.monotonic()
                deadline = deadline if deadline is not None else now + self.connect_wait
                if now >= deadline or (wanted is not None and not wanted()):
                    raise WorkerBusy(f"the worker's queue stayed full for {self.connect_wait:g} s") from None
                await asyncio.sleep(min(delay, deadline - now))
                delay = min(delay * 2, 0.05)
                continue
            return _Connection(reader, writer)
        raise WorkerBusy("the worker's queue stayed full")

    async def request(self, method: str, target: str, headers: dict[str, str], body=None,
                      wanted: Callable[[], bool] | None = None) -> UpstreamResponse:  # fmt: skip
        """Send a request (body: None, bytes, or an async iterator of bytes) and read the answer's head.

        wanted: see _connect."""
        connection = await self._connect(wanted)
        streamed = body is not None and not isinstance(body, bytes | bytearray)
        lines = [f"{method} {target} HTTP/1.1", "Host: worker"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        if isinstance(body, bytes | bytearray):
            if "Content-Length" not in headers:
                lines.append(f"Content-Length: {len(body)}")
        elif streamed and "Content-Length" not in headers:
            lines.append("Transfer-Encoding: chunked")
        # aiohttp's parser decoded the client's bytes as UTF-8 with surrogateescape: this gives them back unchanged.
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape")
        writer = connection.writer
        try:
            if streamed:
                writer.write(head)
                return await self._exchange_streamed(connection, method, body, chunked="Content-Length" not in headers)
            writer.write(head + body if body else head)
            await writer.drain()
            return await self._read_head(connection, method)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
            connection.close()
            raise UpstreamError(f"{type(exc).__name__}: {exc}") from None
        except BaseException:
            connection.close()  # e.g. the client's body broke off: the worker must see a cut, not an end
            raise

    async def _exchange_streamed(self, connection: _Connection, method: str, body: AsyncIterator[bytes], chunked: bool) -> UpstreamResponse:
        """Send a streamed body while listening for the answer: a worker may answer before the body ends.

        It does so when it refuses the request early (a bad import line, an invalid key, a replayed
        Idempotency-Key answer), or when it has what it needs before the body's framing ends (an S3
        aws-chunked body is decoded to its trailer before the HTTP chunked body's last chunk): then the
        rest of the body is not sent, and the connection is not reused. A body-less answer hands the
        connection back only once the whole body was sent: handed back as soon as the answer came, it
        could carry another request while this body's end was still to be written after it, and the
        worker, reading that request as the rest of this body, waited ~10 s (aiohttp's lingering time)
        and reset it (measured: 2-3 of every 32 aws-cli parts over https were 503s after 10 s).
        """
        sending = asyncio.ensure_future(self._send_stream(connection.writer, body, chunked))
        answer = asyncio.ensure_future(self._read_head(connection, method, hand_back=False))
        try:
            await asyncio.wait((sending, answer), return_when=asyncio.FIRST_COMPLETED)
            if sending.done():
                sending.result()  # the body's own error (the client broke off) wins over the worker's
                await connection.writer.drain()
                response = await answer
            else:
                sending.cancel()
                response = answer.result()
                response._keep_alive = False  # the body was cut: the connection is closed, not reused
            if response._remaining == 0 and not response.chunked:
                response._done()
            return response
        finally:
            for task in (sending, answer):
                if not task.done():
                    task.cancel()
                elif not task.cancelled():
                    task.exception()  # retrieved: a worker killed mid-request fails both; one error is enough (no traceback)

    @staticmethod
    async def _send_stream(writer: asyncio.StreamWriter, body: AsyncIterator[bytes], chunked: bool) -> None:
        async for chunk in body:
            if not chunk:
                continue
            if chunked:  # three buffers, one writev: joining them copied each body twice (~0.3 CPU-s a GiB)
                writer.writelines((b"%x\r\n" % len(chunk), chunk, b"\r\n"))
            else:
                writer.write(chunk)
            await writer.drain()
        if chunked:
            writer.write(b"0\r\n\r\n")

    async def _read_head(self, connection: _Connection, method: str, hand_back: bool = True) -> UpstreamResponse:
        """The answer's status and headers; a body-less answer hands the connection back unless hand_back is False."""
        raw = await connection.reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("utf-8", "surrogateescape").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers: list[tuple[str, str]] = []
        length = None
        keep_alive = True
        chunked = False
        for line in lines[1:]:
            if not line:
                continue
            name, _, value = line.partition(":")
            value = value.strip()
            lowered = name.lower()
            if lowered == "content-length":
                length = int(value)
            elif lowered == "connection" and value.lower() == "close":
                keep_alive = False
            elif lowered == "transfer-encoding":
                if value.lower() != "chunked" or length is not None:
                    raise ValueError(f"a worker answered with Transfer-Encoding {value!r}")
                chunked = True
                continue  # hop-by-hop: the gateway frames its own answer
            headers.append((name, value))
        if chunked and length is not None:
            raise ValueError("a worker answered with both Content-Length and Transfer-Encoding")
        if method == "HEAD" or status in (204, 304):
            body_length, chunked = 0, False
        else:
            body_length = length or 0
        response = UpstreamResponse(self, connection, status, headers, length, keep_alive)
        response._remaining = body_length
        response.chunked = chunked
        if body_length == 0 and not chunked and hand_back:
            response._done()
        return response
