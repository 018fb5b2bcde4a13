"""The gateway's S3 port: check the signature and the scope, then answer from memory or forward to a worker.

A CORS preflight (OPTIONS) is the one request forwarded unsigned: browsers never sign it (S3-25).

The worker learns who signed, the payload mode and, for signed chunks, the derived signing key
from one internal header (S3_CONTEXT), which the gateway drops from clients' requests.
"""

from __future__ import annotations

import asyncio
import json
import time

from aiohttp import web

from ...errors import ImstoreError
from ..httpserver import PUBLIC_HEADERS, GatewayServer, bound_port, host_for_url, server_options
from ..protocol import S3_CONTEXT, WRITE_METHODS
from ..wire import answer
from .cors import METHODS as CORS_METHODS
from .memory import S3Memory
from .sigv4 import Caller, Signatures
from .xml import XML_TYPE, S3Error, error_document, error_from_imstore

__all__ = ["S3Front", "context_header", "caller_from_header", "start_s3", "PREFLIGHT"]

PREFLIGHT = Caller("", "preflight", "UNSIGNED-PAYLOAD")  # no key: a worker answers it with OPTIONS only (cors.py)
REFUSAL_CORS_TIMEOUT = 5.0  # seconds a refusal waits for its CORS headers from a worker


def context_header(caller: Caller) -> str:
    document: dict = {"name": caller.name, "scope": caller.scope, "payload": caller.payload}
    if caller.chunks is not None:
        chunks = caller.chunks
        document["chunks"] = [chunks.signing_key.hex(), chunks.seed_signature, chunks.amz_date, chunks.scope]
    return json.dumps(document, separators=(",", ":"))


def caller_from_header(value: str) -> Caller:
    from .sigv4 import ChunkContext

    document = json.loads(value)
    chunks = document.get("chunks")
    context = ChunkContext(bytes.fromhex(chunks[0]), chunks[1], chunks[2], chunks[3]) if chunks else None
    return Caller(document["name"], document["scope"], document["payload"], context)


def error_response(error: S3Error, resource: str, public_headers: dict) -> web.Response:
    body = error_document(error.code, error.message, resource) if error.status != 304 else None
    return web.Response(status=error.status, body=body, headers={**public_headers, **error.headers, "Content-Type": XML_TYPE})


class S3Front:
    """The request handler of the S3 port, over the gateway's workers, limits and accounting."""

    def __init__(self, gateway):
        self.gateway = gateway
        self.signatures = Signatures(gateway.auth.s3_key)
        self.memory = S3Memory(gateway.config.store_root, gateway.memory.stamps)

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        if request.method == "GET":
            response = self._from_memory(request)
            if response is not None:
                return response
        gateway = self.gateway
        gateway.in_flight += 1
        started = time.monotonic()
        state = {"route": "s3", "worker": "-", "bytes_in": 0, "bytes_out": 0}
        resource = request.raw_path.partition("?")[0]
        try:
            response = await self._dispatch(request, state)
        except S3Error as exc:
            response = error_response(exc, resource, PUBLIC_HEADERS)
            if state["worker"] == "-" and "Origin" in request.headers:  # refused here: a worker adds its own
                response.headers.update(await self._refusal_cors(request))
        except ImstoreError as exc:
            response = error_response(error_from_imstore(exc, gateway._public_detail(request, exc)), resource, PUBLIC_HEADERS)
        except (ConnectionError, TimeoutError) as exc:
            gateway._account(request, state, 499, started)
            raise ConnectionError(str(exc)) from None
        except Exception as exc:  # a bug of ours: an S3 error document, the traceback on stderr
            import traceback

            traceback.print_exc()
            response = error_response(S3Error(500, "InternalError", f"internal error: {type(exc).__name__}"), resource, PUBLIC_HEADERS)
        finally:
            gateway.in_flight -= 1
        if response.status >= 400 and request.body_exists and state["worker"] == "-":
            response.force_close()  # refused before its body was read: the rest of the body is not a next request
        if isinstance(response, web.Response) and response.body is not None:
            state["bytes_out"] = len(response.body)
        gateway._account(request, state, response.status, started)
        return response

    async def _refusal_cors(self, request: web.BaseRequest) -> dict:
        """The CORS headers of the bucket's rules for an error this front gives a browser's request (a bad or
        expired signature, a read key's write), as a worker gives them with its answers (S3-25), so that the page
        can read the error. A worker works them out as for a preflight; when it cannot, the error goes without."""
        bucket = request.raw_path.partition("?")[0].split("/")[1]
        if not bucket or request.method not in CORS_METHODS:
            return {}
        slot = self.gateway.supervisor.pick()  # only now: a refusal that needs no headers takes no turn of the rotation
        if slot is None or slot.pool is None:
            return {}
        asked = {S3_CONTEXT: context_header(PREFLIGHT), "Origin": request.headers["Origin"],
                 "Access-Control-Request-Method": request.method}  # fmt: skip
        try:
            upstream = await asyncio.wait_for(slot.pool.request("OPTIONS", f"/{bucket}", asked), REFUSAL_CORS_TIMEOUT)
            await upstream.read()
        except Exception:  # noqa: BLE001 - the error itself is the answer; these headers only help a page read it
            return {}
        if upstream.status != 200:
            return {}
        return {name: value for name, value in upstream.headers if name.lower().startswith("access-control-") or name.lower() == "vary"}

    def _from_memory(self, request: web.BaseRequest):
        """A kept answer to a signed GET (the signature checked first), or None: the usual path answers it, and
        any error (a miss re-checks the signature there; it then goes to a worker, which costs far more)."""
        started = time.monotonic()
        raw_path, headers = request.raw_path, request.headers
        if not self.memory.may_answer("GET", raw_path, headers):
            return None
        try:
            self.signatures.check("GET", raw_path, headers)
        except Exception:  # noqa: BLE001 - the usual path gives the error its answer
            return None
        answers = self.memory.answers
        prepared = answers.get(raw_path, answers.stamp())
        if prepared is None:
            return None
        self.gateway.memory.hits["s3"] += 1
        self.gateway._account(request, {"route": "s3", "worker": "memory", "bytes_in": 0, "bytes_out": len(prepared.data)}, 200, started)
        return answer(request, prepared)

    async def _dispatch(self, request: web.BaseRequest, state: dict) -> web.StreamResponse:
        if not request.raw_path.startswith("/") or not request.raw_path.isascii():
            raise S3Error(400, "InvalidURI", "the request target must be a path in ASCII")
        if request.method == "OPTIONS":  # a CORS preflight: browsers never sign one; the worker answers only that
            if request.content_length or "Transfer-Encoding" in request.headers:  # nothing unsigned carries bytes to a worker
                raise S3Error(400, "InvalidRequest", "a CORS preflight (OPTIONS) has no body")
            return await self.gateway._forward(request, state, {S3_CONTEXT: context_header(PREFLIGHT)})
        caller = self.signatures.check(request.method, request.raw_path, request.headers)
        if request.method in WRITE_METHODS and caller.scope != "write":
            raise S3Error(403, "AccessDenied", f"the key {caller.name!r} has the {caller.scope} scope; {request.method} needs write")
        if self.memory.may_answer(request.method, request.raw_path, request.headers):
            stamp = self.memory.stamp()  # before forwarding: see latest.py
            state["keep"] = lambda headers, data: self.memory.keep(request.raw_path, stamp, headers, data)
        upload_id = request.rel_url.query.get("uploadId") if "uploadId=" in request.raw_path else None
        return await self.gateway._forward(request, state, {S3_CONTEXT: context_header(caller)}, affinity=upload_id)


async def start_s3(config, gateway, ssl_context, info) -> web.BaseRunner:
    """The S3 port: its own server, with the same limits, over the same gateway (workers, tokens, TLS)."""
    from ...errors import UsageError

    server = GatewayServer(S3Front(gateway).handle, **server_options(config.client_timeout))
    runner = web.ServerRunner(server, handle_signals=False, shutdown_timeout=config.shutdown_timeout)
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.s3_port, ssl_context=ssl_context, backlog=1024)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise UsageError(f"cannot listen on {config.host}:{config.s3_port} (S3): {exc.strerror or exc}") from None
    scheme = "https" if ssl_context else "http"
    info(f"imstore serve: S3 on {scheme}://{host_for_url(config.host)}:{bound_port(runner, config.s3_port)}")
    return runner
