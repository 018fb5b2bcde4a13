"""Request and response bodies of a worker: reading bodies (whole or streamed), answers for puts
and listings, and slices of object files. worker.WorkerApp handles the routes with these.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import queue
import threading
from collections.abc import AsyncIterator, Iterator

from aiohttp import web

from ..errors import BodyIncomplete, UnsupportedMediaType
from ..fsio import CHUNK_SIZE
from ..hashing import blake3
from ..objects import ObjectReader
from .headers import positive
from .protocol import JSONL_TYPES, PAGE_DEFAULT, PAGE_MAX, TAR_TYPES, VERSION_HEADER, key_etag, version_document

# Seconds a request body may stay silent before the worker gives up on it.
BODY_IDLE_TIMEOUT = float(os.environ.get("IMSTORE_BODY_TIMEOUT", "30"))
PUMP_AHEAD = 4 << 20  # bytes of a streamed body read ahead of the thread that takes them (see _BodyPump)

def json_response(document, status: int = 200, headers: dict | None = None) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(document, ensure_ascii=False).encode("utf-8"),
        headers={**(headers or {}), "Content-Type": "application/json"},
    )


def page_limit(text: str | None) -> int:
    """A page's size: PAGE_DEFAULT when not given, PAGE_MAX at most."""
    limit = positive(text, "limit")
    return PAGE_DEFAULT if limit is None else min(limit, PAGE_MAX)


def documents(versions) -> bytes:
    """Version documents, comma-separated, for the inside of a JSON array."""
    return ", ".join(json.dumps(version_document(version), ensure_ascii=False) for version in versions).encode("utf-8")


def listing_etag(seq: int, chain: str, target: str) -> str:
    """The log position (seq and chain hash) a listing was read at, and which listing (its path and query)."""
    return f"{seq}-{blake3(f'{chain} {target}'.encode('utf-8', 'surrogatepass')).hexdigest()[:32]}"


def wants_whole_body(request: web.BaseRequest) -> bool:
    """A plain GET: no HEAD, no conditional, no range (those may need no bytes, or other bytes)."""
    headers = request.headers
    return request.method == "GET" and "If-None-Match" not in headers and "Range" not in headers


def put_answer(status: int, document: dict) -> web.Response:
    """A put's answer; its ETag is the key's new one (H1), for an If-Match on the next write."""
    etag = key_etag(document["version"], document["hash"])
    return json_response(document, status, {"ETag": f'"{etag}"', VERSION_HEADER: str(document["version"])})


async def read_small_body(request: web.BaseRequest) -> bytes:
    try:
        data = await asyncio.wait_for(request.content.read(), BODY_IDLE_TIMEOUT)
    except TimeoutError:
        raise BodyIncomplete("the request body stopped arriving") from None
    except Exception as exc:
        raise BodyIncomplete(f"the request body broke off: {exc}") from None
    if request.content_length is not None and len(data) != request.content_length:
        raise BodyIncomplete(f"the request body has {len(data)} of its {request.content_length} bytes")
    return data


@contextlib.asynccontextmanager
async def streamed_body(content) -> AsyncIterator[Iterator[bytes]]:
    """The request body as a blocking iterator for a pool thread, which raises BodyIncomplete if the body breaks
    off or stays silent for BODY_IDLE_TIMEOUT. A task on the loop reads the body as it arrives, for as long as
    the block runs, and queues its pieces for the thread (_BodyPump): a queue hand-off a piece, where asking the
    loop for each piece (a coroutine, a task and two futures a trip) cost ~50 µs of CPU, 0.2 CPU-s a GiB.

        async with streamed_body(request.content) as chunks:
            result = await loop.run_in_executor(pool, lambda: store.write_stream(chunks))
    """
    pump = _BodyPump(content)
    try:
        yield iter(pump)
    finally:
        await pump.close()


class _BodyPump:
    """Moves one request body from the event loop to the thread that iterates over it. Once the thread asks,
    the loop side reads ahead at most PUMP_AHEAD bytes, then waits for the thread to take half of them (the
    body's flow control reaches the client as before: aiohttp stops reading the socket while its own buffer
    is full). A worker so holds at most PUMP_AHEAD read ahead for each pool thread that reads a body."""

    def __init__(self, content):
        self.loop = asyncio.get_running_loop()
        self.content = content
        self.pieces: queue.SimpleQueue = queue.SimpleQueue()
        self.lock = threading.Lock()
        self.queued = 0  # bytes read from the body, not yet taken by the thread
        self.paused = False
        self.room = asyncio.Event()  # set when the thread has taken enough for the reading to go on
        self.task: asyncio.Task | None = None
        self.closed = False

    def __iter__(self) -> Iterator[bytes]:
        # Reading starts when a thread first asks: a handler still waiting for a pool thread holds no bytes.
        try:
            self.loop.call_soon_threadsafe(self._start)
        except RuntimeError as exc:  # the loop is closed: the server is stopping
            raise BodyIncomplete(f"the request body broke off: {exc}") from None
        while True:
            try:
                piece = self.pieces.get(timeout=BODY_IDLE_TIMEOUT)
            except queue.Empty:
                raise BodyIncomplete("the request body stopped arriving") from None
            if isinstance(piece, BaseException):
                raise BodyIncomplete(f"the request body broke off: {piece or type(piece).__name__}")
            if not piece:
                return
            with self.lock:
                self.queued -= len(piece)
                resume = self.paused and self.queued <= PUMP_AHEAD // 2
                if resume:
                    self.paused = False
            if resume:
                self.loop.call_soon_threadsafe(self.room.set)
            yield piece

    def _start(self) -> None:  # on the loop
        if self.closed:  # the handler ended before its thread began to read: that thread stops at once
            self.pieces.put(asyncio.CancelledError())
        elif self.task is None:
            self.task = self.loop.create_task(self._read())

    async def _read(self) -> None:
        try:
            while True:
                piece = await self.content.readany()
                with self.lock:
                    self.queued += len(piece)
                self.pieces.put(piece)
                if not piece:
                    return
                while True:  # checked again after each wake: a wake the thread sent for an earlier pause reads nothing
                    with self.lock:
                        self.paused = self.queued > PUMP_AHEAD
                        if not self.paused:
                            break
                        self.room.clear()
                    await self.room.wait()
        except asyncio.CancelledError as exc:  # the handler ended (or was cancelled) first: a thread still reading stops
            self.pieces.put(exc)
            raise
        except Exception as exc:  # the thread raises BodyIncomplete with it
            self.pieces.put(exc)

    async def close(self) -> None:
        """Stop reading, and return once the reading has stopped: aiohttp reads what is left of a body after
        the handler, and a read of ours still waiting would make that fail."""
        self.closed = True
        if self.task is not None:
            self.task.cancel()
            await asyncio.wait({self.task})


def import_kind(content_type: str | None) -> str | None:
    """"jsonl", "tar", or None (sniff) from an import body's Content-Type."""
    if content_type is None:
        return None
    media = content_type.partition(";")[0].strip().lower()
    if media in JSONL_TYPES:
        return "jsonl"
    if media in TAR_TYPES:
        return "tar"
    raise UnsupportedMediaType(f"an import body is a tar (application/x-tar) or JSON lines (application/x-ndjson), not {media!r}")


class ChunkReader(io.RawIOBase):
    """A blocking raw stream over an iterator of chunks (a request body read from a pool thread)."""

    def __init__(self, chunks: Iterator[bytes]):
        self._chunks = chunks
        self._pending = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self._pending:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._pending = memoryview(chunk)
        count = min(len(buffer), len(self._pending))
        buffer[:count] = self._pending[:count]
        self._pending = self._pending[count:]
        return count


def file_slice(reader: ObjectReader, start: int, length: int) -> Iterator[bytes]:
    location = reader.local_file()
    with open(location.path, "rb", buffering=0) as handle:
        handle.seek(location.offset + start)
        while length > 0:
            chunk = handle.read(min(CHUNK_SIZE, length))
            if not chunk:
                raise ConnectionError("object shorter than its index says")
            length -= len(chunk)
            yield chunk

