"""The gateway's HTTP server: limits on what it parses, the headers on every answer, and small helpers.

Shared by the v1 port (gateway.py) and the S3 port (s3/front.py).
"""

from __future__ import annotations

import os
import re
import sys

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong
from aiohttp.web_protocol import RequestHandler

from ..errors import ImstoreError
from .protocol import PROBLEM_TYPE, problem

__all__ = [
    "ClientReads", "GatewayServer", "LimitedRequestHandler", "PUBLIC_HEADERS", "RETRY_AFTER", "MAX_LINE", "MAX_FIELD", "MAX_HEADERS",
    "problem_response", "write_stderr", "bound_port", "host_for_url", "server_options",
]  # fmt: skip

MAX_LINE = 8190  # request line: longer is 414
MAX_FIELD = 8192  # one header: longer is 431 (the two limits differ so the error tells them apart)
MAX_HEADERS = 100
# On every answer. No software name or version (S7); nosniff: a browser takes each answer for its
# Content-Type, never guesses a page out of stored bytes (S8).
PUBLIC_HEADERS = {"Server": "imstore", "X-Content-Type-Options": "nosniff"}
# Every 503 says when to come back (S3): the cause is passing (a busy or restarting worker, a store that is away).
RETRY_AFTER = "1"


def server_options(client_timeout: float) -> dict:
    """aiohttp Server keywords of both ports: the parse limits, idle allowances and read buffer."""
    return {"access_log": None, "max_line_size": MAX_LINE, "max_field_size": MAX_FIELD, "max_headers": MAX_HEADERS,
            "keepalive_timeout": client_timeout, "lingering_time": client_timeout, "read_bufsize": 256 << 10}  # fmt: skip


class ClientReads:
    """How many times this process has read bytes from any client, on either port. Every request is read
    before it is handled, so a log stamp taken when the count was what it is now is younger than every
    request handled now: the memory path stats the log again only when the count moved (latest.py, RP1)."""

    count = 0


class LimitedRequestHandler(RequestHandler):
    """Requests aiohttp cannot parse: oversized headers are 431, long targets 414, the rest 400; problem+json.

    Also where aiohttp would log a traceback for a connection that is gone: a client that hung up,
    or one we cut off (a stalled reader). The gateway has written that request's access line."""

    def data_received(self, data: bytes) -> None:
        ClientReads.count += 1  # before aiohttp parses (and queues) any request in these bytes
        super().data_received(data)

    def handle_error(self, request, status=500, exc=None, message=None):
        if isinstance(exc, ConnectionError):
            raise ConnectionError("the client is gone") from None  # aiohttp closes the connection without a word
        if status != 400:
            response = super().handle_error(request, status, exc, message)
            response.headers.update(PUBLIC_HEADERS)
            if status == 503:
                response.headers.setdefault("Retry-After", RETRY_AFTER)
            return response
        if isinstance(exc, LineTooLong):
            status = 431 if str(exc.args[1]) == str(MAX_FIELD) else 414
        elif isinstance(exc, BadHttpMessage) and "Too many headers" in str(exc):
            status = 431
        detail = parse_failure(status, exc)
        print(f"imstore serve: - - {status} 0B 0.0ms worker=- ({detail})", file=sys.stderr, flush=True)
        if request.writer.output_size > 0:
            raise ConnectionError("the answer had started; cannot send an error")
        response = problem_response(status, None, f"malformed request: {detail}")
        response.force_close()
        return response


def parse_failure(status: int, exc: BaseException | None) -> str:
    """What was wrong with a request aiohttp could not parse, without any of its bytes: they may hold
    a secret (a token in a query string), and answering them back makes the server an echo."""
    if status == 414:
        return f"the request line is longer than {MAX_LINE} bytes"
    if status == 431:
        return f"a header line is longer than {MAX_FIELD} bytes, or there are more than {MAX_HEADERS} headers"
    text = str(getattr(exc, "message", None) or exc or "").splitlines()[0:1]
    # aiohttp puts the offending bytes after a colon or in quotes: keep only the words before them.
    reason = re.split(r"[:'\"(\[]", text[0], maxsplit=1)[0].strip() if text else ""
    return reason[:100] or "cannot be parsed"


class GatewayServer(web.Server):
    def __call__(self) -> RequestHandler:
        return LimitedRequestHandler(self, loop=self._loop, **self._kwargs)


def write_stderr(line: str) -> None:
    data = line.encode("utf-8", "backslashreplace")
    try:
        while data:
            data = data[os.write(2, data) :]
    except OSError:
        pass  # a closed or full stderr must not fail the request


def problem_response(status: int, error: ImstoreError | None, detail: str, headers: dict | None = None) -> web.Response:
    extra = {"Retry-After": RETRY_AFTER} if status == 503 else {}
    return web.Response(
        status=status,
        body=problem(error, status, detail),
        headers={**PUBLIC_HEADERS, **extra, **(headers or {}), "Content-Type": PROBLEM_TYPE},
    )


def bound_port(runner: web.BaseRunner, asked: int) -> int:
    """The port the server listens on (the one asked for, or the one the system chose for 0)."""
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2 and isinstance(address[1], int):
            return address[1]
    return asked


def host_for_url(host: str) -> str:
    return f"[{host}]" if ":" in host else host
