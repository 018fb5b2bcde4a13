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
(memory.py, latest.py).
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from ..errors import BodyTooLarge, ClientTooSlow, ImstoreError, InvalidInput, Unavailable, UsageError
from ..validate import parse_size  # re-exported: `serve --max-body` imports it from here
from .auth import Authenticator, TokenStore, token_file_warning
from .binding import check_binding, is_loopback, server_ssl_context  # check_binding, is_loopback: re-exported
from .headers import non_negative
from .httpserver import (
    PUBLIC_HEADERS,
    RETRY_AFTER,
    GatewayServer,
    bound_port,
    host_for_url,
    problem_response,
    server_options,
    write_stderr,
)
from .memory import GatewayMemory, is_full_id, needs_worker
from .metrics import Metrics
from .node import Node
from .protocol import (
    EXPAND_LIMIT,
    INTERNAL_HEADERS,
    SENDFILE_FILE,
    SENDFILE_OFFER,
    WORKER_HEADER,
    WRITE_METHODS,
    match_route,
    server_paths,
    without_paths,
)
from .supervisor import Supervisor, WorkerSlot, worker_timeout_from_env
from .upstream import PIECE, NotConnected, UpstreamError, UpstreamResponse, WorkerBusy
from .wire import answer

__all__ = ["GatewayConfig", "Gateway", "serve", "check_binding", "is_loopback", "parse_size"]

BUFFERED = 256 << 10  # bodies up to this size are read whole
HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "TE", "Trailer",
        "Transfer-Encoding", "Upgrade", "Host", "Authorization", "Content-Length", "Date", "Server", "Expect",
    )
)  # fmt: skip
OPENAPI = Path(__file__).with_name("openapi.json")


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
        self.memory = GatewayMemory(config.store_root)
        self.private_paths = server_paths(config.store_root, supervisor.runtime_dir)

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        if request.method == "GET" and (found := self.memory.find(request.raw_path)) is not None:
            response = self._from_memory(request, *found)
            if response is not None:
                return response
        self.in_flight += 1
        try:
            return await self._handle(request)
        finally:
            self.in_flight -= 1

    def _from_memory(self, request: web.BaseRequest, route: str, prepared) -> web.StreamResponse | None:
        """A kept answer for a request that may have it (a token, no range or condition), with its access line
        and metrics; None: the request takes the usual path (which also answers a missing token)."""
        started = time.monotonic()
        headers = request.headers
        if needs_worker(headers):
            return None
        try:
            if self.auth.scope_for(headers.get("Authorization")) is None:
                return None
        except ImstoreError:
            return None
        self.memory.hits[route] += 1
        self._account(request, {"route": route, "worker": "memory", "bytes_in": 0, "bytes_out": len(prepared.data)}, 200, started)
        return answer(request, prepared)

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
            response = problem_response(exc.http_status, exc, self._public_detail(request, exc))
        except (ConnectionError, asyncio.CancelledError):
            self._account(request, state, 499, started)
            raise
        except Exception as exc:
            import traceback

            traceback.print_exc()
            response = problem_response(500, None, f"internal error: {type(exc).__name__}")
        if isinstance(response, web.Response) and response.body is not None:
            state["bytes_out"] = len(response.body)
        self._account(request, state, response.status, started)
        return response

    def _public_detail(self, request: web.BaseRequest, error: ImstoreError) -> str:
        """The error's message with the server's paths withheld; the whole message goes to the log."""
        detail = str(error) or error.title
        public = without_paths(detail, self.private_paths)
        if public != detail:
            write_stderr(f"imstore serve: {request.method} {request.raw_path.partition('?')[0]}: {detail}\n")
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
        write_stderr(line)

    async def _dispatch(self, request: web.BaseRequest, state: dict) -> web.StreamResponse:
        if not request.raw_path.startswith("/") or not request.raw_path.isascii():
            raise UsageError("the request target must be a path in ASCII (percent-encode keys)")
        matched = match_route(request.raw_path)
        if matched is None:
            return problem_response(404, None, f"no route for {request.raw_path.partition('?')[0][:200]!r}")
        route = matched.route
        state["route"] = route.name
        if request.method not in route.methods:
            return problem_response(405, None, f"{request.method} is not allowed on {route.template}", {"Allow": ", ".join(route.methods)})
        if route.public:  # the health routes: a load balancer needs no token; PIDs and counts are for token holders
            status, health = await self.node.health(route.name, matched.query(), self.supervisor.health(), self._has_token(request))
            return _json(health, status)
        scope = self.auth.scope_for(request.headers.get("Authorization"))
        if scope is None:
            return problem_response(
                401, None, "a valid API token is needed: Authorization: Bearer TOKEN", {"WWW-Authenticate": 'Bearer realm="imstore"'}
            )
        if request.method in WRITE_METHODS and scope != "write":
            return problem_response(403, None, f"this token has the {scope} scope; {request.method} needs a write token")
        if route.name.startswith("replication") and scope != "replicate":  # the feed carries token hashes too (R6)
            return problem_response(403, None, f"this token has the {scope} scope; the replication feed needs a replicate token"
                                               " (imstore token create --scope replicate)")  # fmt: skip
        if request.method in WRITE_METHODS and (refusal := self.node.write_refusal()) is not None:
            raise refusal  # a standby: 503 naming the primary
        if route.name == "replication_log" and scope == "replicate":  # a standby's acknowledgement (or proof we were superseded)
            await self.node.acknowledge(request.headers, non_negative(matched.query().get("from"), "from"))
        if route.name == "metrics":
            hits = self.memory.hits
            text = self.metrics.render(self.supervisor.restarts, self.supervisor.health()["workers"], hits["object"], self.in_flight,
                                       hits["key"], hits["s3"])  # fmt: skip
            text += self.node.metrics()
            return web.Response(body=text.encode(), headers={**PUBLIC_HEADERS, "Content-Type": "text/plain; version=0.0.4; charset=utf-8"})
        if route.name == "openapi":
            return web.Response(body=self.openapi, headers={**PUBLIC_HEADERS, "Content-Type": "application/json"})
        if route.name == "object" and request.method == "GET" and is_full_id(matched.param()) and "?" not in request.raw_path:
            state["fill"] = matched.param()  # kept when a worker's answer hashes to it (memory.py)
        if route.name == "key" and request.method == "GET" and "?" not in request.raw_path and not needs_worker(request.headers):
            state["latest"] = self.memory.stamp()  # before forwarding: see latest.py
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
    async def _forward(self, request: web.BaseRequest, state: dict, extra: dict | None = None,
                       affinity: str | None = None) -> web.StreamResponse:  # fmt: skip
        """Send a request on to a worker; extra: internal headers to add (the S3 port's context); affinity: requests
        with the same one go to the same live worker (Supervisor.pick)."""
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
            slot = self.supervisor.pick(exclude=failed, affinity=affinity) or await self.supervisor.wait_for_any(2.0)
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
                    self.memory.keep_object(state["fill"], out_headers, data)
                elif upstream.status == 200 and "latest" in state:
                    self.memory.keep_latest(request.raw_path, state["latest"], out_headers, data)
                elif upstream.status == 200 and "keep" in state:
                    state["keep"](out_headers, data)  # the S3 port's memory (s3/memory.py)
                return web.Response(status=upstream.status, body=data, headers=out_headers)
            return await self._relay(request, upstream, out_headers, state)
        finally:
            upstream.release()

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


class _WorkerFailed(Exception):
    """The worker did not answer (reset, or closed early) after the request had been sent to it."""


class _NotSent(Exception):
    """No connection to the worker was made; busy: its listen queue stayed full (back-pressure)."""

    def __init__(self, message: str, busy: bool):
        super().__init__(message)
        self.busy = busy


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
    node = Node(config.store_root, config.follow, config.follow_token, config.cacert, log=lambda line: write_stderr(line + "\n"),
                sync_standbys=config.sync_standbys, sync_timeout=config.sync_timeout, peers=config.peers)  # fmt: skip
    try:
        await supervisor.start()
        node.start()
        gateway = Gateway(config, supervisor, authenticator, node)
        server = GatewayServer(gateway.handle, **server_options(config.client_timeout))
        runner = web.ServerRunner(server, handle_signals=False, shutdown_timeout=config.shutdown_timeout)
        await runner.setup()
        site = web.TCPSite(runner, config.host, config.port, ssl_context=ssl_context, backlog=1024)
        try:
            await site.start()
        except OSError as exc:  # a port in use or an address not ours: say which, not "unexpected OSError"
            raise UsageError(f"cannot listen on {config.host}:{config.port}: {exc.strerror or exc}") from None
        scheme = "https" if ssl_context else "http"
        port = bound_port(runner, config.port)  # --port 0: the port the system chose, which clients need
        info(f"imstore serve: listening on {scheme}://{host_for_url(config.host)}:{port} with {config.workers} workers")
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
