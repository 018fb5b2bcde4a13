"""The gateway: authenticates, enforces limits, and forwards round-robin to the workers.

It is the only process on the network. Bodies stream both ways in chunks (small
ones are read whole, which is faster and lets a write with an Idempotency-Key be
retried on another worker). GET/HEAD are retried once on another worker when the
first one fails at the connection level; a worker that fails is not sent more
requests until it answers its health check again.

Small objects asked for by full id are immutable, so the gateway keeps the ones
it has relayed (after hashing them itself) and answers repeat GETs from memory,
as a caching proxy would: the hop to a worker costs more than the rest of such a
request. Latest versions by key are kept the same way while the log is unchanged
(latest.py). `Cache-Control: no-cache` on a request, or any conditional or Range
header, sends it to a worker as usual.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong
from aiohttp.web_protocol import RequestHandler

from ..errors import BodyTooLarge, ClientTooSlow, ImstoreError, InvalidInput, Unavailable, UsageError
from ..hashing import OBJECT_ID_LEN, hash_bytes
from ..validate import parse_size  # re-exported: `serve --max-body` imports it from here
from .auth import Authenticator, TokenStore, token_file_warning
from .binding import check_binding, is_loopback, server_ssl_context  # check_binding, is_loopback: re-exported
from .headers import non_negative
from .hot import HotObjects
from .latest import LatestAnswers
from .metrics import Metrics
from .node import Node
from .protocol import (
    EXPAND_LIMIT,
    INTERNAL_HEADERS,
    PROBLEM_TYPE,
    SENDFILE_FILE,
    SENDFILE_OFFER,
    WORKER_HEADER,
    WRITE_METHODS,
    match_route,
    problem,
    server_paths,
    without_paths,
)
from .supervisor import Supervisor, WorkerSlot, worker_timeout_from_env
from .upstream import PIECE, NotConnected, UpstreamError, UpstreamResponse, WorkerBusy

__all__ = ["GatewayConfig", "Gateway", "serve", "check_binding", "is_loopback", "parse_size"]

MAX_LINE = 8190  # request line: longer is 414
MAX_FIELD = 8192  # one header: longer is 431 (the two limits differ so the error tells them apart)
MAX_HEADERS = 100
BUFFERED = 256 << 10  # bodies up to this size are read whole
HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "TE", "Trailer",
        "Transfer-Encoding", "Upgrade", "Host", "Authorization", "Content-Length", "Date", "Server", "Expect",
    )
)  # fmt: skip
OPENAPI = Path(__file__).with_name("openapi.json")
# On every answer. No software name or version (S7); nosniff: a browser takes each answer for its
# Content-Type, never guesses a page out of stored bytes (S8).
PUBLIC_HEADERS = {"Server": "imstore", "X-Content-Type-Options": "nosniff"}
_FULL_ID = re.compile(r"[0-9a-f]+")
# Every 503 says when to come back (S3): the cause is passing (a busy or restarting worker, a store that is away).
RETRY_AFTER = "1"
# Request headers that make an object GET something other than "the whole object": a worker answers those.
NOT_FROM_MEMORY = ("Range", "If-Range", "If-None-Match", "If-Match", "If-Modified-Since")


@dataclass
class GatewayConfig:
    store_root: str
    host: str = "127.0.0.1"
    port: int = 8765
    workers: int = 2
    tls_cert: str | None = None
    tls_key: str | None = None
    max_body: int | None = None
    client_timeout: float = 30.0  # idle time allowed while reading a request or writing a response
    shutdown_timeout: float = 10.0
    worker_env: dict[str, str] = field(default_factory=dict)  # added to the workers' environment (the read cache settings)
    # A worker silent for a fifth of this gets no new requests; silent for all of it, it is restarted (D5).
    worker_timeout: float = field(default_factory=worker_timeout_from_env)
    token_file: str | None = None  # a --token-file given with serve: checked (a warning if others can read it)
    follow: str | None = None  # a standby: the primary's URL (--follow), its token, and --cacert to trust it
    follow_token: str | None = None
    cacert: str | None = None
    sync_standbys: int = 0  # sync mode: a write is answered once this many standbys hold it (--sync-standbys)
    sync_timeout: float = 5.0
    peers: tuple[str, ...] = ()  # --peer: other nodes whose higher epoch fences this one (R10)
    s3_port: int | None = None  # serve --s3-port: S3 on this port too (s3/front.py); None: off


class _LimitedRequestHandler(RequestHandler):
    """Requests aiohttp cannot parse: oversized headers are 431, long targets 414, the rest 400; problem+json.

    Also where aiohttp would log a traceback for a connection that is gone: a client that hung up,
    or one we cut off (a stalled reader). The gateway has written that request's access line."""

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
        detail = _parse_failure(status, exc)
        print(f"imstore serve: - - {status} 0B 0.0ms worker=- ({detail})", file=sys.stderr, flush=True)
        if request.writer.output_size > 0:
            raise ConnectionError("the answer had started; cannot send an error")
        response = _problem(status, None, f"malformed request: {detail}")
        response.force_close()
        return response


def _parse_failure(status: int, exc: BaseException | None) -> str:
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


class _GatewayServer(web.Server):
    def __call__(self) -> RequestHandler:
        return _LimitedRequestHandler(self, loop=self._loop, **self._kwargs)


class Gateway:
    """The request handler of the gateway process."""

    def __init__(self, config: GatewayConfig, supervisor: Supervisor, authenticator: Authenticator, node: Node | None = None):
        self.config = config
        self.node = node or Node(config.store_root)
        self.supervisor = supervisor
        self.auth = authenticator
        self.metrics = Metrics()
        self.openapi = OPENAPI.read_bytes()
        self.in_flight = 0
        self.objects: HotObjects[tuple] = HotObjects()
        self.latest = LatestAnswers(config.store_root)
        self.private_paths = server_paths(config.store_root, supervisor.runtime_dir)

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        self.in_flight += 1
        try:
            return await self._handle(request)
        finally:
            self.in_flight -= 1

    async def drain(self, timeout: float) -> None:
        """Wait (bounded) until no request is in flight."""
        deadline = time.monotonic() + timeout
        while self.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.02)

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        started = time.monotonic()
        state = {"route": "unknown", "worker": "-", "bytes_in": 0, "bytes_out": 0}
        try:
            response = await self._dispatch(request, state)
        except ImstoreError as exc:
            response = _problem(exc.http_status, exc, self._public_detail(request, exc))
        except (ConnectionError, asyncio.CancelledError):
            self._account(request, state, 499, started)
            raise
        except Exception as exc:
            import traceback

            traceback.print_exc()
            response = _problem(500, None, f"internal error: {type(exc).__name__}")
        if isinstance(response, web.Response) and response.body is not None:
            state["bytes_out"] = len(response.body)
        self._account(request, state, response.status, started)
        return response

    def _public_detail(self, request: web.BaseRequest, error: ImstoreError) -> str:
        """The error's message with the server's paths withheld; the whole message goes to the log."""
        detail = str(error) or error.title
        public = without_paths(detail, self.private_paths)
        if public != detail:
            _write_stderr(f"imstore serve: {request.method} {request.raw_path.partition('?')[0]}: {detail}\n")
        return public

    def _account(self, request: web.BaseRequest, state: dict, status: int, started: float) -> None:
        seconds = time.monotonic() - started
        self.metrics.observe(state["route"], request.method, status, state["bytes_in"], state["bytes_out"], seconds)
        # The access line: never the Authorization header, never the query string's values (they could be secrets).
        # One os.write on fd 2 rather than print(flush=True): same single write, less Python per request.
        line = (
            f"imstore serve: {request.method} {request.raw_path.partition('?')[0]} {status} {state['bytes_out']}B"
            f" {seconds * 1000:.1f}ms worker={state['worker']}\n"
        )
        _write_stderr(line)

    async def _dispatch(self, request: web.BaseRequest, state: dict) -> web.StreamResponse:
        if not request.raw_path.startswith("/") or not request.raw_path.isascii():
            raise UsageError("the request target must be a path in ASCII (percent-encode keys)")
        matched = match_route(request.raw_path)
        if matched is None:
            return _problem(404, None, f"no route for {request.raw_path.partition('?')[0][:200]!r}")
        route = matched.route
        state["route"] = route.name
        if request.method not in route.methods:
            return _problem(405, None, f"{request.method} is not allowed on {route.template}", {"Allow": ", ".join(route.methods)})
        if route.public:  # the health routes: a load balancer needs no token; PIDs and counts are for token holders
            status, health = await self.node.health(route.name, matched.query(), self.supervisor.health(), self._has_token(request))
            return _json(health, status)
        scope = self.auth.scope_for(request.headers.get("Authorization"))
        if scope is None:
            return _problem(
                401, None, "a valid API token is needed: Authorization: Bearer TOKEN", {"WWW-Authenticate": 'Bearer realm="imstore"'}
            )
        if request.method in WRITE_METHODS and scope != "write":
            return _problem(403, None, f"this token has the {scope} scope; {request.method} needs a write token")
        if request.method in WRITE_METHODS and (refusal := self.node.write_refusal()) is not None:
            raise refusal  # a standby: 503 naming the primary
        if route.name == "replication_log" and scope == "replicate":  # a standby's acknowledgement (or proof we were superseded)
            await self.node.acknowledge(request.headers, non_negative(matched.query().get("from"), "from"))
        if route.name == "metrics":
            text = self.metrics.render(self.supervisor.restarts, self.supervisor.health()["workers"], self.objects.hits, self.in_flight,
                                       self.latest.hits)
            text += self.node.metrics()
            return web.Response(body=text.encode(), headers={**PUBLIC_HEADERS, "Content-Type": "text/plain; version=0.0.4; charset=utf-8"})
        if route.name == "openapi":
            return web.Response(body=self.openapi, headers={**PUBLIC_HEADERS, "Content-Type": "application/json"})
        if route.name == "object" and request.method == "GET":
            wanted = matched.param()
            if _is_full_id(wanted) and "?" not in request.raw_path:
                state["fill"] = wanted
                if not _needs_worker(request):
                    hit = self.objects.get(wanted)
                    if hit is not None:
                        state["worker"] = "memory"
                        headers, data = hit
                        return web.Response(body=data, headers=headers)
        if route.name == "key" and request.method == "GET" and "?" not in request.raw_path and not _needs_worker(request):
            state["latest"] = stamp = self.latest.stamp()  # before forwarding: see latest.py
            hit = self.latest.get(request.raw_path, stamp)
            if hit is not None:
                state["worker"] = "memory"
                return web.Response(body=hit[1], headers=hit[0])
        response = await self._forward(request, state)
        if self.node.sync is not None and request.method in WRITE_METHODS and 200 <= response.status < 300:
            await self.node.sync.wait()  # sync mode: answered once enough standbys hold it (or 503 NotReplicated)
        return response

    def _has_token(self, request: web.BaseRequest) -> bool:
        authorization = request.headers.get("Authorization")
        if authorization is None:
            return False
        try:
            return self.auth.scope_for(authorization) is not None
        except ImstoreError:  # the token file cannot be read: the public answer still can be given
            return False

    # ------------------------------------------------------------ forwarding
    async def _forward(self, request: web.BaseRequest, state: dict, extra: dict | None = None) -> web.StreamResponse:
        """Send a request on to a worker; extra: internal headers to add (the S3 port's context)."""
        length = request.content_length
        limit = self.config.max_body
        if limit is not None and length is not None and length > limit:
            raise BodyTooLarge(f"the body is {length} bytes; this server takes at most {limit}")
        dropped = HOP_BY_HOP | INTERNAL_HEADERS
        headers = {name: value for name, value in request.headers.items() if name.lower() not in dropped}
        if extra:
            headers.update(extra)
        if request.method == "GET" and request.transport is not None and request.transport.get_extra_info("sslcontext") is None:
            headers[SENDFILE_OFFER] = "1"
        if limit is not None and state["route"] == "import":
            headers[EXPAND_LIMIT] = str(limit)  # a compressed import may not expand past the limit either (S1)
        body: object = None
        if request.method in WRITE_METHODS or request.body_exists:
            if request.headers.get("Expect", "").lower() == "100-continue":
                await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # auth and limits passed: send the body
            if length is not None and length <= BUFFERED:
                body = await self._read_whole(request, length)
                state["bytes_in"] = len(body)
            else:
                body = self._stream_body(request, state)
            if length is not None:
                headers["Content-Length"] = str(length)
        retry = request.method in ("GET", "HEAD") or ("Idempotency-Key" in request.headers and not hasattr(body, "__aiter__"))
        failed: WorkerSlot | None = None
        failures = not_sent = 0
        while True:  # at most 2 failed exchanges and one unreached try per worker: bounded
            slot = self.supervisor.pick(exclude=failed) or await self.supervisor.wait_for_any(2.0)
            if slot is None:
                raise Unavailable("no worker is alive")
            state["worker"] = slot.id
            slot.requests += 1
            try:
                return await self._exchange(request, slot, headers, body, state)
            except _NotSent as failure:
                # Nothing reached the worker (no connection): any request, a write too, may go to another.
                if not failure.busy:
                    self.supervisor.suspect(slot)
                failed = slot
                not_sent += 1
                if not_sent < len(self.supervisor.slots) + (0 if failure.busy else 1):
                    continue
                if failure.busy:
                    raise Unavailable(f"the server is busy ({failure}); retry it") from None
                raise Unavailable(f"worker {slot.id} cannot be reached ({failure}); retry it") from None
            except _WorkerFailed as failure:
                self.supervisor.suspect(slot)
                failed = slot
                failures += 1
                if retry and failures < 2:
                    continue
                raise Unavailable(f"worker {slot.id} failed during the request ({failure}); retry it") from None

    async def _read_whole(self, request: web.BaseRequest, length: int) -> bytes:
        try:
            data = await asyncio.wait_for(request.content.read(), self.config.client_timeout)
        except TimeoutError:
            raise ClientTooSlow("the request body stopped arriving") from None
        if len(data) != length:
            raise InvalidInput(f"the body has {len(data)} of its {length} bytes")
        return data

    async def _stream_body(self, request: web.BaseRequest, state: dict):
        """The client's body, chunk by chunk; an error here is kept in state so the answer can name it."""
        limit = self.config.max_body
        try:
            while True:
                try:
                    chunk = await asyncio.wait_for(request.content.readany(), self.config.client_timeout)
                except TimeoutError:
                    raise ClientTooSlow("the request body stopped arriving") from None
                if not chunk:
                    return
                state["bytes_in"] += len(chunk)
                if limit is not None and state["bytes_in"] > limit:
                    raise BodyTooLarge(f"the body is larger than this server's limit of {limit} bytes")
                yield chunk
        except ImstoreError as exc:
            state["body_error"] = exc
            raise
        except ConnectionError:  # the client hung up mid-body: a 499 in the access log, like one read whole
            state["body_error"] = ConnectionResetError("the client hung up mid-body")
            raise
        except Exception as exc:
            state["body_error"] = InvalidInput(f"the request body broke off: {exc or type(exc).__name__}")
            raise

    async def _exchange(self, request: web.BaseRequest, slot: WorkerSlot, headers: dict, body, state: dict) -> web.StreamResponse:
        assert slot.pool is not None
        try:
            upstream = await slot.pool.request(request.method, request.raw_path, headers, body, wanted=lambda: slot.alive)
        except NotConnected as exc:
            raise _NotSent(str(exc), busy=isinstance(exc, WorkerBusy)) from None
        except UpstreamError as exc:
            if "body_error" in state:
                raise state["body_error"] from None  # the client's body failed, not the worker
            raise _WorkerFailed(str(exc)) from None
        try:
            # Names pass as the worker spelled them: its aiohttp server sends ours (ETag, X-Imstore-*) unchanged.
            out_headers = {name: value for name, value in upstream.headers if name.lower() not in HOP_BY_HOP}
            out_headers.update(PUBLIC_HEADERS)
            out_headers[WORKER_HEADER] = str(slot.id)
            if upstream.status == 503:
                out_headers.setdefault("Retry-After", RETRY_AFTER)
            sendfile = out_headers.pop(SENDFILE_FILE, None)
            if sendfile is not None:
                return await self._sendfile(request, upstream.status, out_headers, sendfile, state)
            size = upstream.content_length
            if request.method == "HEAD" or upstream.status in (204, 304):
                response = web.StreamResponse(status=upstream.status, headers=out_headers)
                if size is not None:
                    response.content_length = size
                await response.prepare(request)
                await response.write_eof()
                return response
            if size is not None and size <= BUFFERED:
                try:
                    data = await upstream.read()
                except UpstreamError as exc:
                    raise _WorkerFailed(str(exc)) from None
                if upstream.status == 200 and "fill" in state:
                    self._keep_object(state["fill"], out_headers, data)
                elif upstream.status == 200 and "latest" in state:
                    kept = {name: value for name, value in out_headers.items() if name != WORKER_HEADER}
                    self.latest.keep(request.raw_path, state["latest"], kept, data)
                return web.Response(status=upstream.status, body=data, headers=out_headers)
            return await self._relay(request, upstream, out_headers, state)
        finally:
            upstream.release()

    def _keep_object(self, object_id: str, headers: dict, data: bytes) -> None:
        """Remember a relayed object for repeat GETs, once its bytes hash to its id here too."""
        if len(data) <= HotObjects.MAX_OBJECT and hash_bytes(data) == object_id:
            self.objects.put(object_id, {name: value for name, value in headers.items() if name != WORKER_HEADER}, data)

    async def _sendfile(self, request: web.BaseRequest, status: int, headers: dict, where: str, state: dict) -> web.StreamResponse:
        """Send bytes a worker has just verified straight from the store's file (zero-copy, like nginx)."""
        from urllib.parse import unquote

        offset, length, path = where.split(" ", 2)
        offset, length = int(offset), int(length)
        response = web.StreamResponse(status=status, headers=headers)
        response.content_length = length
        with open(unquote(path), "rb") as handle:
            await response.prepare(request)
            transport = request.transport
            if transport is None:
                raise ConnectionResetError("client gone")
            # A reader slower than 1 MiB/s (after the usual idle allowance) is cut off.
            allowance = self.config.client_timeout + length / (1 << 20)
            try:
                try:
                    await asyncio.wait_for(asyncio.get_running_loop().sendfile(transport, handle, offset, length), allowance)
                except NotImplementedError:  # uvloop has no loop.sendfile: copy through memory (measured as fast here)
                    await asyncio.wait_for(self._copy_file(response, handle, offset, length), allowance)
            except OSError as exc:  # incl. TimeoutError (a slow reader) and EIO: the 200 has started, so only a cut is left
                transport.abort()
                raise ConnectionError(f"sendfile cut off: {exc}") from None
        state["bytes_out"] += length
        await response.write_eof()
        return response

    @staticmethod
    async def _copy_file(response: web.StreamResponse, handle, offset: int, length: int) -> None:
        handle.seek(offset)
        while length > 0:
            piece = handle.read(min(PIECE, length))
            if not piece:
                raise ConnectionError("the object's file ended early")  # never a short 200: the connection is cut
            await response.write(piece)
            length -= len(piece)

    async def _relay(self, request: web.BaseRequest, upstream: UpstreamResponse, headers: dict, state: dict) -> web.StreamResponse:
        """Stream a large response through; a worker dying mid-way cuts the client's connection (never a short 200)."""
        response = web.StreamResponse(status=upstream.status, headers=headers)
        if upstream.content_length is not None:
            response.content_length = upstream.content_length
        await response.prepare(request)
        try:
            async for piece in upstream.pieces():
                await asyncio.wait_for(response.write(piece), self.config.client_timeout)  # a reader that stalls is cut off
                state["bytes_out"] += len(piece)
        except (UpstreamError, TimeoutError) as exc:
            if request.transport is not None:
                request.transport.abort()
            raise ConnectionError(f"relay cut off: {exc}") from None
        await response.write_eof()
        return response


def _write_stderr(line: str) -> None:
    data = line.encode("utf-8", "backslashreplace")
    try:
        while data:
            data = data[os.write(2, data) :]
    except OSError:
        pass  # a closed or full stderr must not fail the request


def _is_full_id(text: str) -> bool:
    return len(text) == OBJECT_ID_LEN and _FULL_ID.fullmatch(text) is not None


def _needs_worker(request: web.BaseRequest) -> bool:
    headers = request.headers
    return any(name in headers for name in NOT_FROM_MEMORY) or "no-cache" in headers.get("Cache-Control", "")


class _WorkerFailed(Exception):
    """The worker did not answer (reset, or closed early) after the request had been sent to it."""


class _NotSent(Exception):
    """No connection to the worker was made; busy: its listen queue stayed full (back-pressure)."""

    def __init__(self, message: str, busy: bool):
        super().__init__(message)
        self.busy = busy


def _problem(status: int, error: ImstoreError | None, detail: str, headers: dict | None = None) -> web.Response:
    extra = {"Retry-After": RETRY_AFTER} if status == 503 else {}
    return web.Response(
        status=status,
        body=problem(error, status, detail),
        headers={**PUBLIC_HEADERS, **extra, **(headers or {}), "Content-Type": PROBLEM_TYPE},
    )


def _json(document, status: int = 200) -> web.Response:
    extra = {"Retry-After": RETRY_AFTER} if status == 503 else {}
    return web.Response(
        status=status, body=json.dumps(document).encode(), headers={**PUBLIC_HEADERS, **extra, "Content-Type": "application/json"}
    )


# ============================================================ start-up and shutdown
async def serve(config: GatewayConfig, info, warn) -> None:
    """Run until SIGTERM/SIGINT: start workers, listen once they all answer, then drain and stop."""
    tokens = TokenStore(config.store_root)
    for path in (config.token_file, tokens.path):
        problem_text = token_file_warning(path) if path is not None else None
        if problem_text is not None:
            warn(problem_text)
    authenticator = Authenticator(tokens)
    check_binding(config, authenticator, warn)
    ssl_context = server_ssl_context(config)
    supervisor = Supervisor(config.store_root, config.workers, shutdown_timeout=config.shutdown_timeout, env=config.worker_env,
                            worker_timeout=config.worker_timeout)  # fmt: skip
    node = Node(config.store_root, config.follow, config.follow_token, config.cacert, log=lambda line: _write_stderr(line + "\n"),
                sync_standbys=config.sync_standbys, sync_timeout=config.sync_timeout, peers=config.peers)  # fmt: skip
    try:
        await supervisor.start()
        node.start()
        gateway = Gateway(config, supervisor, authenticator, node)
        server = _GatewayServer(
            gateway.handle,
            access_log=None,
            max_line_size=MAX_LINE,
            max_field_size=MAX_FIELD,
            max_headers=MAX_HEADERS,
            keepalive_timeout=config.client_timeout,
            lingering_time=config.client_timeout,
            read_bufsize=256 << 10,
        )
        runner = web.ServerRunner(server, handle_signals=False, shutdown_timeout=config.shutdown_timeout)
        await runner.setup()
        site = web.TCPSite(runner, config.host, config.port, ssl_context=ssl_context, backlog=1024)
        try:
            await site.start()
        except OSError as exc:  # a port in use or an address not ours: say which, not "unexpected OSError"
            raise UsageError(f"cannot listen on {config.host}:{config.port}: {exc.strerror or exc}") from None
        scheme = "https" if ssl_context else "http"
        port = _bound_port(runner, config.port)  # --port 0: the port the system chose, which clients need
        info(f"imstore serve: listening on {scheme}://{_host_for_url(config.host)}:{port} with {config.workers} workers")
        s3_runner = None
        if config.s3_port is not None:
            from .s3.front import start_s3

            s3_runner = await start_s3(config, gateway, ssl_context, info)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
        info("imstore serve: stopping (finishing requests in flight)")
        # aiohttp's own shutdown stops reading request bodies at once, so drain first:
        # stop accepting, let in-flight requests finish (bounded), then close what is left.
        await site.stop()
        if s3_runner is not None:
            for s3_site in s3_runner.sites:
                await s3_site.stop()
        await gateway.drain(config.shutdown_timeout)
        await runner.cleanup()
        if s3_runner is not None:
            await s3_runner.cleanup()
    finally:
        node.stop()
        await supervisor.stop()


def _bound_port(runner: web.BaseRunner, asked: int) -> int:
    """The port the server listens on (the one asked for, or the one the system chose for 0)."""
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2 and isinstance(address[1], int):
            return address[1]
    return asked


def _host_for_url(host: str) -> str:
    return f"[{host}]" if ":" in host else host
