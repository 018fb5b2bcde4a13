"""Batch reads against a server over one HTTP/1.1 connection, pipelined (`imstore --remote URL get --batch`).

Each input line becomes a GET as soon as it is read; answers come back in the
order asked (HTTP/1.1 pipelining), so a script that waits for each answer and
one that pipes in 10,000 lines are both served by one connection. A connection
the server closes (keep-alive timeout, a restart) is opened again and the GETs
not yet answered are sent again (they change nothing), at most RETRIES times in
a row. Bytes are hashed here against the ETag before their answer is handed on.

The connection runs in its own thread with its own event loop; answers reach
the caller's thread through a queue, in order, so stdout is written there.
"""

from __future__ import annotations

import asyncio
import collections
import queue
import ssl
import tempfile
import threading
from collections.abc import Iterable, Iterator
from urllib.parse import quote, urlsplit

from ..errors import AmbiguousPrefix, CorruptObject, ImstoreError, KeyDeleted, NotFound, Unavailable, UsageError
from ..hashing import blake3, validate_prefix
from ..readbatch import AMBIGUOUS, DELETED, MISSING, OK, WHOLE, Answer, parse_get_line
from ..validate import validate_key
from .protocol import STALE_HEADER, VERSION_HEADER, error_from_problem, key_path, object_id_of_etag

__all__ = ["pipelined_answers"]

RETRIES = 3
IN_FLIGHT = 256  # lines read ahead, and GETs sent but not yet answered: memory stays bounded on endless input
PIECE = 1 << 16
_END = object()


class _Ask:
    """One line: the request to send, or the answer known without asking."""

    __slots__ = ("query", "request", "answer")

    def __init__(self, query: str, request: bytes | None, answer: Answer | None = None):
        self.query, self.request, self.answer = query, request, answer


class _Spooled:
    """A large verified body kept in a temp file, streamed after its header (chunks() like a reader)."""

    def __init__(self, handle, size: int):
        self.handle, self.size = handle, size

    def chunks(self) -> Iterator[bytes]:
        with self.handle:
            self.handle.seek(0)
            while piece := self.handle.read(PIECE):
                yield piece


class _Pipeline:
    def __init__(self, base: str, token: str | None, context: ssl.SSLContext | None, kind: str, with_bytes: bool):
        parts = urlsplit(base)
        self.host, self.secure = parts.hostname or "127.0.0.1", parts.scheme == "https"
        self.port = parts.port or (443 if self.secure else 80)
        self.prefix = parts.path.rstrip("/")
        self.context = (context or ssl.create_default_context()) if self.secure else None
        self.head = f"Host: {parts.netloc}\r\n" + (f"Authorization: Bearer {token}\r\n" if token else "")
        self.kind, self.with_bytes = kind, with_bytes
        self.warnings: collections.deque[str] = collections.deque()  # handed to the caller's thread with the answers
        self.asked: collections.deque[_Ask] = collections.deque()  # sent (or answered here), not yet handed on
        self.lock = asyncio.Lock()  # a reconnect and its resends go out before any new request
        self.more = asyncio.Event()
        self.room = asyncio.Event()  # set when an answer leaves self.asked
        self.all_sent = False
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    # ------------------------------------------------------------ sending
    def ask(self, line: str) -> _Ask:
        try:
            if self.kind == "get":
                key, version = parse_get_line(line)
                validate_key(key)
                target = key_path(self.prefix + "/v1/keys/", key)
                if version is not None:
                    target += "?version=" + quote(version, safe="")
            else:
                target = f"{self.prefix}/v1/objects/{validate_prefix(line)}"
        except (UsageError, UnicodeError):
            return _Ask(line, None, Answer(line if self.kind == "cat" else parse_get_line(line)[0], MISSING))
        return _Ask(line, f"GET {target} HTTP/1.1\r\n{self.head}\r\n".encode("ascii"))

    async def connect(self) -> None:
        if self.writer is not None:
            self.writer.close()
        try:
            self.reader, self.writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port, ssl=self.context, limit=1 << 20), 10
            )
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            raise Unavailable(f"cannot reach the server at {self.host}:{self.port}: {exc}") from None

    async def send(self, item: _Ask) -> None:
        while len(self.asked) >= IN_FLIGHT:
            self.room.clear()
            await self.room.wait()
        async with self.lock:
            self.asked.append(item)
            if item.request is not None:
                try:
                    self.writer.write(item.request)
                    await self.writer.drain()
                except (OSError, RuntimeError):
                    pass  # the receiver opens a new connection and sends every unanswered request again
        self.more.set()

    # ------------------------------------------------------------ receiving
    async def receive(self, out: queue.Queue) -> None:
        failures = 0
        while True:
            if not self.asked:
                if self.all_sent:
                    return
                self.more.clear()
                await self.more.wait()
                continue
            item = self.asked[0]
            if item.answer is None:
                try:
                    status, headers, body = await self.read_response()
                except (OSError, EOFError, asyncio.IncompleteReadError, ValueError) as exc:
                    failures += 1
                    if failures > RETRIES:
                        raise Unavailable(f"the server at {self.host}:{self.port} keeps closing the connection ({exc})") from None
                    await self.resend()
                    continue
                failures = 0
                item.answer = self.answer(item.query, status, headers, body)
                if headers.get("connection", "").lower() == "close":
                    self.hand_on(out)
                    await self.resend()
                    continue
            self.hand_on(out)

    def hand_on(self, out: queue.Queue) -> None:
        out.put(self.asked.popleft().answer)  # blocks while the caller's queue is full: stdout sets the pace
        self.room.set()

    async def resend(self) -> None:
        async with self.lock:
            await self.connect()
            for item in self.asked:
                if item.request is not None and item.answer is None:
                    self.writer.write(item.request)
            await self.writer.drain()

    async def read_response(self) -> tuple[int, dict, object]:
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name:
                headers[name.strip().lower()] = value.strip()
        if "chunked" in headers.get("transfer-encoding", "").lower():
            body = await self.read_chunked()
            return status, headers, (body, None)
        return status, headers, await self.read_body(int(headers.get("content-length", "0")))

    async def read_body(self, length: int) -> tuple[bytes | None, object]:
        """(bytes, None) up to WHOLE, else (None, a temp file holding them); --batch-check drops large ones."""
        if length <= WHOLE:
            return await self.reader.readexactly(length), None
        spool = tempfile.TemporaryFile() if self.with_bytes else None
        while length > 0:
            piece = await self.reader.readexactly(min(PIECE, length))
            if spool is not None:
                spool.write(piece)
            length -= len(piece)
        return None, spool

    async def read_chunked(self) -> bytes:
        parts = []
        while True:
            size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await self.reader.readuntil(b"\r\n")
                return b"".join(parts)
            parts.append(await self.reader.readexactly(size))
            await self.reader.readexactly(2)

    def answer(self, query: str, status: int, headers: dict, body) -> Answer:
        key = parse_get_line(query)[0] if self.kind == "get" else query
        if status >= 400:
            data = body[0] if body is not None and body[0] is not None else b""
            error = error_from_problem(status, data)
            if isinstance(error, KeyDeleted):
                return Answer(key, DELETED)
            if isinstance(error, AmbiguousPrefix) and self.kind == "cat":
                return Answer(key, AMBIGUOUS)
            if isinstance(error, NotFound) or (isinstance(error, UsageError) and status == 400):
                return Answer(key, MISSING)
            raise error
        if headers.get(STALE_HEADER.lower()) == "1":
            self.warnings.append(f"the server's store is unavailable: {key!r} comes from its cache and may be stale")
        object_id = object_id_of_etag(headers.get("etag", ""))
        size = int(headers.get("content-length", "0"))
        answer = Answer(key, OK, int(headers.get(VERSION_HEADER.lower(), "0")), object_id, size, headers.get("content-type"))
        if not self.with_bytes:
            return answer  # --batch-check: the header's facts only
        return _verified(answer, *body)


def _verified(answer: Answer, data: bytes | None, spool) -> Answer:
    hasher = blake3()
    if data is not None:
        hasher.update(data)
    else:
        spool.seek(0)
        while piece := spool.read(PIECE):
            hasher.update(piece)
    if hasher.hexdigest() != answer.object_id:
        if spool is not None:
            spool.close()
        raise CorruptObject(f"the bytes received for {answer.object_id} do not hash to it")
    if data is not None:
        return answer._replace(data=data)
    return answer._replace(reader=_Spooled(spool, answer.size))


async def _run(pipeline: _Pipeline, source: Iterator[str], out: queue.Queue) -> None:
    loop = asyncio.get_running_loop()
    lines: asyncio.Queue = asyncio.Queue(maxsize=IN_FLIGHT)

    def read() -> None:
        """stdin blocks: read it on a daemon thread that nobody joins (a failed batch must not wait for input)."""
        try:
            for line in source:
                asyncio.run_coroutine_threadsafe(lines.put(line), loop).result()
            asyncio.run_coroutine_threadsafe(lines.put(None), loop).result()
        except BaseException as exc:  # the loop is gone (the batch ended), or stdin failed
            if not loop.is_closed():
                loop.call_soon_threadsafe(lines.put_nowait, exc)

    await pipeline.connect()
    receiver = asyncio.create_task(pipeline.receive(out))
    threading.Thread(target=read, name="imstore-batch-input", daemon=True).start()
    try:
        while True:
            getter = asyncio.ensure_future(lines.get())
            await asyncio.wait({getter, receiver}, return_when=asyncio.FIRST_COMPLETED)
            if not getter.done():  # the receiver stopped first: its error ends the batch now
                getter.cancel()
                break
            line = getter.result()
            if isinstance(line, BaseException):
                raise line
            if line is None:
                break
            await pipeline.send(pipeline.ask(line))
        pipeline.all_sent = True
        pipeline.more.set()
        await receiver
    finally:
        receiver.cancel()
        if pipeline.writer is not None:
            pipeline.writer.close()


def pipelined_answers(base: str, token: str | None, context: ssl.SSLContext | None, lines: Iterable[str], kind: str,
                      with_bytes: bool, warn) -> Iterator[Answer]:  # fmt: skip
    """The answers to lines, in order, from the server at base over one pipelined connection."""
    out: queue.Queue = queue.Queue(maxsize=64)  # bounded: a slow stdout slows the reading, not memory
    source = iter(lines)
    pipeline = _Pipeline(base, token, context, kind, with_bytes)

    def work() -> None:
        try:
            asyncio.run(_run(pipeline, source, out))
            out.put(_END)
        except BaseException as exc:  # handed to the caller's thread, which raises it
            out.put(exc)

    thread = threading.Thread(target=work, name="imstore-pipeline", daemon=True)
    thread.start()
    while True:
        item = out.get()
        if item is _END:
            break
        while pipeline.warnings:
            warn(pipeline.warnings.popleft())
        if isinstance(item, BaseException):
            raise item if isinstance(item, ImstoreError) else Unavailable(f"the batch connection failed: {item}")
        yield item
    thread.join(5)
