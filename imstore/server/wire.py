"""Answers the gateway sends from its memory, written to the connection as prepared bytes.

A memory hit (an object by full id, a key's latest version, an S3 GET) is the gateway's
most frequent answer and its cheapest one, so its status line and headers are
serialised once, when the answer is kept, and each hit writes them, the Date line and
the verified bytes to the connection in one call, past aiohttp's response machinery
(which cost as much as the rest of such a request; RP5). Only for HTTP/1.1 keep-alive
requests: an HTTP/1.0 client or a `Connection: close` gets an ordinary aiohttp response
built from the same headers, so what aiohttp would add for those (Connection) is never
missing.
"""

from __future__ import annotations

import time
from email.utils import formatdate
from typing import NamedTuple

from aiohttp import HttpVersion11, web

__all__ = ["Prepared", "prepare", "answer", "WireAnswer"]


class Prepared(NamedTuple):
    """A kept 200 answer: its headers (for the ordinary path), its bytes, and its head on the wire without Date."""

    headers: dict
    data: bytes
    head: bytes


def prepare(headers: dict, data: bytes) -> Prepared | None:
    """The answer in its kept form; None when a header could not be written as is (never kept then)."""
    lines = ["HTTP/1.1 200 OK"]
    for name, value in headers.items():
        text = str(value)
        if name.lower() in ("content-length", "date", "connection", "transfer-encoding") or _unsafe(name) or _unsafe(text):
            return None
        lines.append(f"{name}: {text}")
    if not any(name.lower() == "content-type" for name in headers):
        lines.append("Content-Type: application/octet-stream")  # what aiohttp's Response would add
    lines.append(f"Content-Length: {len(data)}")
    try:
        head = ("\r\n".join(lines) + "\r\n").encode("latin-1")
    except UnicodeEncodeError:
        return None
    return Prepared(dict(headers), data, head)


def _unsafe(text: str) -> bool:
    return "\r" in text or "\n" in text or "\x00" in text


_date_second = -1
_date_line = b""


def date_line() -> bytes:
    """The Date header line, formatted once a second (as aiohttp does)."""
    global _date_second, _date_line
    now = int(time.time())
    if now != _date_second:
        _date_line = f"Date: {formatdate(now, usegmt=True)}\r\n\r\n".encode("ascii")
        _date_second = now
    return _date_line


class WireAnswer:
    """What aiohttp's request loop needs of a response (prepare, write_eof, keep_alive, status), for prepared bytes."""

    __slots__ = ("_prepared", "status", "keep_alive", "body_length")

    def __init__(self, prepared: Prepared) -> None:
        self._prepared = prepared
        self.status = 200
        self.keep_alive = True
        self.body_length = len(prepared.data)

    async def prepare(self, request: web.BaseRequest) -> None:
        transport = request.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the client is gone")
        transport.writelines((self._prepared.head, date_line(), self._prepared.data))
        await request.writer.drain()  # a client that does not read: wait, as aiohttp's own writes do

    async def write_eof(self, data: bytes = b"") -> None:
        return None


def answer(request: web.BaseRequest, prepared: Prepared) -> web.StreamResponse | WireAnswer:
    """The response for a memory hit: prepared bytes on an HTTP/1.1 keep-alive connection, else aiohttp's."""
    if request.version == HttpVersion11 and request.keep_alive:
        return WireAnswer(prepared)
    return web.Response(body=prepared.data, headers=prepared.headers)
