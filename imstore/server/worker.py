"""A worker process: HTTP API v1 over one store, on a unix socket only the gateway can reach.

Blocking store calls run in a thread pool; each pool thread keeps its own Store
(a SQLite connection belongs to one thread). Request bodies are streamed into
Store.put_stream chunk by chunk; responses are verified before their last byte
leaves (small objects are read and checked whole, large ones hold back their last
chunk until the hash has matched, so a damaged object ends in a cut connection,
never in a complete wrong answer).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import sqlite3
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote

from aiohttp import web

from ..cache import CacheSettings
from ..errors import ImstoreError, NotFound, Unavailable, UsageError
from ..fsio import CHUNK_SIZE
from ..objects import ObjectReader
from ..store import PutResult, Store
from ..transfer import SMALL_OBJECT
from ..validate import parse_time, validate_key
from .bodies import (
    ChunkReader,
    documents,
    file_slice,
    import_kind,
    json_response,
    listing_etag,
    page_limit,
    put_answer,
    read_small_body,
    streamed_body,
    wants_whole_body,
)
from .conditions import check_if_match, conditional_write
from .feed_routes import FeedRoutes
from .headers import etag_matches, idempotency_key, meta_header, non_negative, parse_range, positive, preconditions, text_header
from .hot import HotObjects
from .idempotency import Claim, IdempotencyLedger, run_once
from .proofroutes import proof_document
from .protocol import (
    DAMAGED_HEADER,
    EXPAND_LIMIT,
    IMMUTABLE,
    MESSAGE_HEADER,
    META_HEADER,
    PROBLEM_TYPE,
    S3_CONTEXT,
    SENDFILE_FILE,
    SENDFILE_OFFER,
    STALE_HEADER,
    VERSION_HEADER,
    RouteMatch,
    key_etag,
    match_route,
    next_link,
    problem,
    put_document,
    server_paths,
    version_document,
    without_paths,
)
from .putbatch import PutBatcher
from .s3.handlers import s3_worker

__all__ = ["WorkerApp", "HEALTH_PATH"]

HEALTH_PATH = "/_worker/health"
SMALL_BODY = 1 << 20  # request bodies up to this size are read whole before the store call
BATCHED_BODY = 64 << 10  # PUTs up to this size (without an Idempotency-Key) are written in batches (putbatch.py)
PRELOAD = 1 << 20  # objects up to this size are read (and verified) in the same pool call that finds them
# Connections the kernel queues for a worker that is behind on accepting them (capped by net.core.somaxconn).
# Past it the gateway waits for room (back-pressure, S3); the variable is for tuning and tests.
LISTEN_BACKLOG = int(os.environ.get("IMSTORE_WORKER_BACKLOG", "1024"))
# Each pool thread's Store has its own read cache memo: keep them small (HotObjects holds the hottest).
THREAD_MEMO_BYTES = 4 << 20
# Stored html or svg opened in a browser runs in a sandbox: no scripts, no access to this origin (S8).
SANDBOX = "sandbox"
PAGE_SLICE = 500  # listing entries read per pool call while a page streams out
# Answers that change (a latest version, a listing): any cache must ask again each time, and shared
# caches must not keep them at all (they are behind a token) (S10).
REVALIDATE = "private, no-cache"
INTERRUPTED_IMPORT = ("an earlier attempt of this import (same Idempotency-Key) was cut off after its body had arrived, and"
                      " may have committed: what it stored counts as unchanged here")  # fmt: skip


class WorkerApp(FeedRoutes):
    """The request handler of one worker process (the replication routes come from FeedRoutes)."""

    def __init__(self, store_root: str, owner_lock: str, threads: int = 8, cache: CacheSettings | None = None):
        self.store_root = store_root
        self.owner_lock = owner_lock
        self.cache = cache  # the read cache settings (serve passes them through IMSTORE_CACHE_*); None: no cache
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="imstore-store")
        self._local = threading.local()
        self.handled = 0
        self.hot = HotObjects()
        self.private_paths = server_paths(store_root, os.path.dirname(owner_lock))
        self.put_batcher = PutBatcher(self.call, self.store, self._flush_warnings)
        self.store_id: str | None = None  # the store this worker serves, from its first open: its ledger must be that store's

    # ------------------------------------------------------------ per-thread resources
    def store(self) -> Store:
        store = getattr(self._local, "store", None)
        if store is None:
            store = self._local.store = Store.open(self.store_root, cache=self.cache)
        elif store.offline_reason is not None:
            # Opened while the store was down (answered by its cache alone): try the store again, so
            # the worker writes and reads fresh once it is back. Costs nothing while the store is up.
            fresh = Store.open(self.store_root, cache=self.cache)
            if fresh.offline_reason is None:
                store.close()
                store = self._local.store = fresh
            else:
                fresh.close()  # keep the old one and what its cache memo holds
        if self.store_id is None:
            self.store_id = store.store_id
        return store

    def ledger(self) -> IdempotencyLedger:
        ledger = getattr(self._local, "ledger", None)
        if ledger is None:
            self.store()  # learns the store's id
            assert self.store_id is not None
            ledger = self._local.ledger = IdempotencyLedger(self.store_root, self.owner_lock, self.store_id)
        return ledger

    async def call(self, function, *args):
        return await asyncio.get_running_loop().run_in_executor(self.pool, function, *args)

    def _flush_warnings(self, store: Store) -> None:
        for warning in store.warnings:
            print(f"imstore worker {os.getpid()}: warning: {warning}", file=sys.stderr, flush=True)
        store.warnings.clear()

    # ------------------------------------------------------------ dispatch
    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        self.handled += 1
        if request.raw_path == HEALTH_PATH:
            return web.json_response({"pid": os.getpid(), "handled": self.handled})
        if S3_CONTEXT in request.headers:  # from the gateway's S3 port (it drops the header from clients)
            return await s3_worker(self).handle(request)
        matched = match_route(request.raw_path)
        if matched is None or matched.route.public or matched.route.name in ("metrics", "openapi"):
            return problem_response(404, None, f"no route for {request.raw_path.partition('?')[0]!r}")
        if request.method not in matched.route.methods:
            return problem_response(405, None, f"{request.method} is not allowed here", {"Allow": ", ".join(matched.route.methods)})
        handler = getattr(self, f"_{matched.route.name}_{request.method.lower()}", None) or getattr(self, f"_{matched.route.name}_get")
        try:
            return await handler(request, matched)
        except ImstoreError as exc:
            detail = str(exc) or exc.title
            public = without_paths(detail, self.private_paths)  # no server paths to clients (S7)
            if public != detail:  # the operator still learns which file
                print(f"imstore worker {os.getpid()}: {request.method} {request.raw_path.partition('?')[0]}: {detail}",
                      file=sys.stderr, flush=True)  # fmt: skip
            return problem_response(exc.http_status, exc, public, getattr(exc, "http_headers", None))
        except (ConnectionError, asyncio.CancelledError):
            raise
        except Exception as exc:  # a bug of ours: 500, and the traceback on stderr
            import traceback

            traceback.print_exc()
            return problem_response(500, None, f"internal error: {type(exc).__name__}")

    # ------------------------------------------------------------ keys
    async def _key_get(self, request: web.BaseRequest, matched: RouteMatch) -> web.StreamResponse:
        key = validate_key(matched.param())
        query = matched.query()
        version, at = query.get("version"), query.get("at")
        if version is not None and at is not None:
            raise UsageError("give version or at, not both")
        moment = parse_time(at) if at is not None else None

        preload = wants_whole_body(request)

        def resolve():
            store = self.store()
            try:
                found, reader = store.open_version(key, version, moment)
            except NotFound as exc:
                if store.read_caveat is not None:  # its detail says why it may be wrong (H2)
                    exc.http_headers = {DAMAGED_HEADER: "1"}
                raise
            finally:
                if store.read_caveat in store.warnings:  # the client is told (DAMAGED_HEADER); writes tell the operator
                    store.warnings.remove(store.read_caveat)
                self._flush_warnings(store)
            data = reader.read() if preload and reader.size <= PRELOAD else None
            return found, reader, data, store.read_caveat is not None

        found, reader, data, damaged = await self.call(resolve)
        headers = {
            VERSION_HEADER: str(found.version),
            "Cache-Control": IMMUTABLE if version is not None else REVALIDATE,
            "Content-Type": found.content_type or "application/octet-stream",
        }
        if found.stale:  # a latest version the cache answered while the store's log could not be read
            headers[STALE_HEADER] = "1"
        if damaged:  # a newer version may have been lost to damage in the log (H2)
            headers[DAMAGED_HEADER] = "1"
        return await self.send_object(request, reader, headers, data, key_etag(found.version, reader.object_id))

    async def _key_put(self, request: web.BaseRequest, matched: RouteMatch) -> web.StreamResponse:
        key = validate_key(matched.param())
        options = {
            "content_type": request.headers.get("Content-Type"),
            "meta": meta_header(request.headers.get(META_HEADER)),
            "message": text_header(request.headers.get(MESSAGE_HEADER)),
            **preconditions(request.headers),
        }
        request_id = idempotency_key(request)
        if request.content_length is not None and request.content_length <= SMALL_BODY:
            data = await read_small_body(request)
            if request_id is None and len(data) <= BATCHED_BODY and "if_match" not in options:
                result = await self.put_batcher.put(key, data, options)
                return put_answer(200 if result.unchanged else 201, put_document(result))
            body = contextlib.nullcontext([data])
        else:
            body = streamed_body(request.content)
        async with body as chunks:

            def put():
                return self._once(request_id, "PUT", key, options, chunks, lambda claim, body: self._put(key, body, options, claim))

            return put_answer(*await self.call(put))

    def _put(self, key: str, chunks, options: dict, claim: Claim | None) -> tuple[int, dict]:
        store = self.store()
        try:
            if claim is not None and claim.state == "orphan" and claim.body is not None:
                result = _resolve_orphan_put(self.store_root, key, chunks, claim.seq_before, options)
            elif "if_match" in options:
                check_if_match(store, key, options["if_match"])  # fail fast: a refused put stores no object
                object_id, _size = store.write_object(chunks)
                result = _put_object(store, key, object_id, options)
            else:
                result = store.put_stream(key, chunks, **options)
        finally:
            self._flush_warnings(store)
        return (200 if result.unchanged else 201), put_document(result)

    async def _key_delete(self, request: web.BaseRequest, matched: RouteMatch) -> web.StreamResponse:
        key = validate_key(matched.param())
        conditions = preconditions(request.headers)
        if conditions.get("if_absent"):
            raise UsageError("If-None-Match: * makes no sense for DELETE")
        message = text_header(request.headers.get(MESSAGE_HEADER))
        request_id = idempotency_key(request)

        def delete():
            work = lambda claim, body: self._delete(key, message, conditions, claim)  # noqa: E731
            return self._once(request_id, "DELETE", key, {"message": message, **conditions}, None, work)

        status, document = await self.call(delete)
        return json_response(document, status, {VERSION_HEADER: str(document["version"])})

    def _delete(self, key: str, message, conditions: dict, claim: Claim | None) -> tuple[int, dict]:
        if claim is not None and claim.state == "orphan" and claim.body is not None:
            with Store.open(self.store_root) as fresh:  # a fresh Store catches its index up with the log
                for record in fresh.log_records(after=claim.seq_before):
                    if record.key == key and record.op == "delete":
                        return 200, version_document(record)
        store = self.store()
        try:
            tombstone = conditional_write(store, key, conditions, lambda number: store.delete(key, message=message, if_version=number))
        finally:
            self._flush_warnings(store)
        return 200, version_document(tombstone)

    def _once(self, request_id: str | None, method: str, target: str, fields: dict, chunks, work) -> tuple[int, dict]:
        """work(claim, body) once per Idempotency-Key (idempotency.run_once); without a key just run it."""
        if request_id is None:
            return work(None, chunks)

        def seq_now() -> int:
            try:
                return self.store().index.state().seq
            except sqlite3.Error as exc:
                raise Unavailable(f"cannot write: the store is unavailable (its index: {exc})") from None

        def warn(text: str) -> None:
            print(f"imstore worker {os.getpid()}: warning: {text}", file=sys.stderr, flush=True)

        # The ledger checks first that the directory still holds this store: nothing of the store is touched
        # (nothing created) where it is not (D4). Its own failures (a full disk) are Unavailable, by cause (D9).
        return run_once(self.ledger(), request_id, method, target, fields, chunks, seq_now, work, warn)

    # ------------------------------------------------------------ import
    async def _import_post(self, request: web.BaseRequest, matched: RouteMatch) -> web.StreamResponse:
        """One import as one atomic batch, from a streamed tar or JSON lines body (the CLI's import --remote).

        The body goes through the same importer as a local import, read in this pool thread as it
        arrives; it is read to its very end before anything commits, so a body that breaks off (a client
        hang-up) commits nothing. A retry with the same Idempotency-Key gets the first answer back; a
        retry after the first attempt's worker died imports again, which adds nothing for content that
        did commit (unchanged items add no version), and says so when that attempt may have committed.
        """
        query = matched.query()
        options = {
            "prefix": query.get("prefix", ""),
            "skip_errors": query.get("skip_errors", "") in ("1", "true", "yes"),
            "name": query.get("name") or "body",
            "message": text_header(request.headers.get(MESSAGE_HEADER)),
            "kind": import_kind(request.headers.get("Content-Type")),
            "max_expanded": non_negative(request.headers.get(EXPAND_LIMIT), EXPAND_LIMIT) if EXPAND_LIMIT in request.headers else None,
        }
        request_id = idempotency_key(request)
        if request.content_length is not None and request.content_length <= SMALL_BODY:
            body = contextlib.nullcontext([await read_small_body(request)])
        else:
            body = streamed_body(request.content)
        fields = {name: value for name, value in options.items() if name != "max_expanded"}  # the server's limit, not the request
        async with body as chunks:

            def run():
                target = f"import?prefix={options['prefix']}"
                return self._once(request_id, "POST", target, fields, chunks, lambda claim, body: self._import(body, options, claim))

            status, document = await self.call(run)
        return json_response(document, status)

    def _import(self, chunks, options: dict, claim: Claim | None = None) -> tuple[int, dict]:
        from ..importer import ImportSummary, import_items
        from ..sources import stream_source

        store = self.store()
        summary = ImportSummary()
        stream = io.BufferedReader(ChunkReader(iter(chunks)), CHUNK_SIZE)

        def drain() -> None:  # the rest of the body (a tar's padding, a compressor's trailer) must arrive whole too
            while stream.read(CHUNK_SIZE):
                pass

        try:
            source = stream_source(stream, summary.skip, kind=options["kind"], name=options["name"], base_dir=None,
                                   max_expanded=options["max_expanded"])  # fmt: skip
            import_items(
                store, source, summary, prefix=options["prefix"], jobs=1, message=options["message"],
                skip_errors=options["skip_errors"], close_stream=False, before_commit=drain,
            )  # fmt: skip
        finally:
            self._flush_warnings(store)
        if claim is not None and claim.state == "orphan" and claim.body is not None:
            summary.warnings.append(INTERRUPTED_IMPORT)
        return (201 if summary.added else 200), summary.to_json()

    # ------------------------------------------------------------ listings
    async def _history_get(self, request: web.BaseRequest, matched: RouteMatch) -> web.StreamResponse:
        key = validate_key(matched.param())
        limit = positive(matched.query().get("limit"), "limit")
        return await self._listing(request, lambda store: store.history(key, limit))

    async def _keys_get(self, request: web.BaseRequest, matched: RouteMatch) -> web.StreamResponse:
        query = matched.query()
        prefix = query.get("prefix", "")
        include_deleted = query.get("all", "") in ("1", "true", "yes")
        limit = page_limit(query.get("limit"))
        after = query.get("after") or None  # a key: the page starts after it

        def end(store: Store):
            return store.ls_page_end(prefix, include_deleted, after, limit)

        def rows(store: Store, cursor, upto, count: int):
            versions = store.ls_page(prefix, include_deleted, cursor, upto, count)
            return versions, (versions[-1].key if versions else cursor)

        return await self._page(request, "/v1/keys", query, limit, after, end, rows)

    async def _log_get(self, request: web.BaseRequest, matched: RouteMatch) -> web.StreamResponse:
        query = matched.query()
        after = non_negative(query.get("after"), "after")
        limit = page_limit(query.get("limit"))

        def end(store: Store):
            return store.log_page_end(after, limit)

        def rows(store: Store, cursor, upto, count: int):
            versions = store.log_page(cursor, upto, count)
            return versions, (versions[-1].seq if versions else cursor)

        return await self._page(request, "/v1/log", query, limit, after, end, rows)

    async def _page(self, request: web.BaseRequest, path: str, query: dict, limit: int, after, end, rows) -> web.StreamResponse:
        """One page of a listing (S2), streamed slice by slice: memory stays flat whatever the page size.

        The page's last entry is fixed first (end: the limit-th entry after the cursor, and whether
        more follow), so the Link to the next page goes in the head; then the entries up to it are
        read in slices, each its own pool call, each taking up where the last one stopped. A failure
        after the head has gone cuts the connection: a client never takes a short page for a whole one.
        """

        def first():
            store = self.store()
            seq, chain = store.log_position()  # before the listing: the listing is at least this new
            tag = listing_etag(seq, chain, request.raw_path)
            if etag_matches(request.headers.get("If-None-Match"), tag):
                return tag, None, None
            upto, more = end(store)
            return tag, (upto, more), rows(store, after, upto, min(PAGE_SLICE, limit))

        tag, bound, first_slice = await self.call(first)
        headers = {"ETag": f'"{tag}"', "Cache-Control": REVALIDATE}
        if bound is None:
            return web.Response(status=304, headers=headers)
        upto, more = bound
        if more:
            headers["Link"] = next_link(path, {**query, "after": str(upto), "limit": str(limit)})
        response = web.StreamResponse(status=200, headers={**headers, "Content-Type": "application/json"})
        await response.prepare(request)
        versions, cursor = first_slice
        asked = min(PAGE_SLICE, limit)
        await response.write(b"[" + documents(versions))
        sent = len(versions)
        try:
            while len(versions) == asked and sent < limit:  # a full slice: there may be more (each round sends one or stops)
                asked = min(PAGE_SLICE, limit - sent)
                versions, cursor = await self.call(lambda cursor=cursor, asked=asked: rows(self.store(), cursor, upto, asked))
                if versions:
                    await response.write(b", " + documents(versions))
                sent += len(versions)
        except ImstoreError as exc:
            print(f"imstore worker {os.getpid()}: {request.raw_path.partition('?')[0]}: {exc}; listing cut off",
                  file=sys.stderr, flush=True)  # fmt: skip
            if request.transport is not None:
                request.transport.abort()
            raise ConnectionError("listing cut off") from None
        await response.write(b"]")
        await response.write_eof()
        return response

    async def _listing(self, request: web.BaseRequest, versions) -> web.StreamResponse:
        """A listing as version documents, tagged with the log position it was read at (S10).

        The log only grows, and its position (seq and chain hash) names everything in it, so an equal
        position means an equal listing: a client's If-None-Match then costs one index read and a 304.
        """

        def read():
            store = self.store()
            seq, chain = store.log_position()  # before the listing: the listing is at least this new
            tag = listing_etag(seq, chain, request.raw_path)
            if etag_matches(request.headers.get("If-None-Match"), tag):
                return tag, None
            return tag, [version_document(v) for v in versions(store)]

        tag, documents = await self.call(read)
        headers = {"ETag": f'"{tag}"', "Cache-Control": REVALIDATE}
        if documents is None:
            return web.Response(status=304, headers=headers)
        return json_response(documents, 200, headers)

    # ------------------------------------------------------------ proofs (server/proofroutes.py)
    async def _proof_get(self, request: web.BaseRequest, matched: RouteMatch) -> web.StreamResponse:
        document = await self.call(lambda: proof_document(self.store(), matched.route.name, matched.query()))
        return json_response(document, 200, {"Cache-Control": REVALIDATE})

    _checkpoint_get = _inclusion_get = _consistency_get = _proof_get

    # ------------------------------------------------------------ objects
    async def _object_get(self, request: web.BaseRequest, matched: RouteMatch) -> web.StreamResponse:
        wanted = matched.param()
        preload = wants_whole_body(request)
        hot = self.hot.get(wanted)
        if hot is not None:  # a full id whose bytes were verified earlier: no trip to the pool
            reader, data = hot
        else:

            def open_and_read():
                reader = self.store().open_object(wanted)
                data = reader.read() if preload and reader.size <= PRELOAD else None
                if data is not None:
                    self.hot.put(reader.object_id, reader, data)
                return reader, data

            reader, data = await self.call(open_and_read)  # one trip to the pool per request
            if not preload:
                data = None
        full = wanted.lower() == reader.object_id
        headers = {"Cache-Control": IMMUTABLE if full else REVALIDATE, "Content-Type": "application/octet-stream"}
        return await self.send_object(request, reader, headers, data)

    async def send_object(
        self, request: web.BaseRequest, reader: ObjectReader, headers: dict, data: bytes | None = None, etag: str | None = None
    ) -> web.StreamResponse:
        """The object's bytes (or a range), verified, with ETag / 304 / 206 / 416 handling.

        data, when given, is the whole object already read and verified; etag is the answer's tag
        (a key's names its version, H1), the object id when not given."""
        etag = etag or reader.object_id
        headers["ETag"] = f'"{etag}"'
        headers["Accept-Ranges"] = "bytes"
        headers["Content-Security-Policy"] = SANDBOX
        size = reader.size
        if etag_matches(request.headers.get("If-None-Match"), etag):
            return web.Response(status=304, headers=headers)
        start, end, status = 0, size, 200
        range_header = request.headers.get("Range")
        if range_header and etag_matches(request.headers.get("If-Range", headers["ETag"]), etag):
            wanted = parse_range(range_header, size)
            if wanted == "unsatisfiable":
                headers["Content-Range"] = f"bytes */{size}"
                return problem_response(416, None, f"the range {range_header!r} is outside the object's {size} bytes", headers)
            if wanted is not None:
                start, end = wanted
                status = 206
                headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        return await self.send_span(request, reader, data, start, end, status, headers)

    async def send_span(self, request: web.BaseRequest, reader: ObjectReader, data: bytes | None, start: int, end: int,
                        status: int, headers: dict) -> web.StreamResponse:  # fmt: skip
        """Answer with bytes [start, end) of a verified object (v1 and S3 alike): HEAD, small from memory,
        sendfile(2) by the gateway, or streamed with the last chunk held back until the hash matched."""
        if request.method == "HEAD":
            response = web.StreamResponse(status=status, headers=headers)
            response.content_length = end - start
            await response.prepare(request)
            await response.write_eof()
            return response
        location = reader.local_file()
        if data is not None or reader.size <= SMALL_OBJECT or location is None:
            # location is None: the bytes come from the read cache (memory), not from a file.
            if data is None:
                data = await self.call(reader.read)
            return web.Response(status=status, body=data[start:end] if status == 206 else data, headers=headers)
        if request.headers.get(SENDFILE_OFFER) == "1":
            # The gateway sends the bytes itself with sendfile(2), once they have hashed right here.
            await self.call(reader.verify)
            headers[SENDFILE_FILE] = f"{location.offset + start} {end - start} {quote(str(location.path))}"
            return web.Response(status=status, headers=headers)
        response = web.StreamResponse(status=status, headers=headers)
        response.content_length = end - start
        await response.prepare(request)
        if status == 206:
            await self.call(reader.verify)
            chunks = file_slice(reader, start, end - start)
        else:
            chunks = reader.chunks()
        await self._stream_held_back(request, response, chunks)
        return response

    async def _stream_held_back(self, request: web.BaseRequest, response: web.StreamResponse, chunks: Iterator[bytes]) -> None:
        """Send chunks, always one behind: the last goes only once the hash has matched."""
        held = None
        try:
            while (chunk := await self.call(next, chunks, None)) is not None:
                if held is not None:
                    await response.write(held)
                held = chunk
        except ImstoreError as exc:
            print(f"imstore worker {os.getpid()}: {exc}; response cut off", file=sys.stderr, flush=True)
            if request.transport is not None:
                request.transport.abort()
            raise ConnectionError("response cut off: the object failed verification") from None
        if held is not None:
            await response.write(held)
        await response.write_eof()


# ============================================================ request parsing helpers
def problem_response(status: int, error: ImstoreError | None, detail: str, headers: dict | None = None) -> web.Response:
    return web.Response(status=status, body=problem(error, status, detail), headers={**(headers or {}), "Content-Type": PROBLEM_TYPE})



def _resolve_orphan_put(store_root: str, key: str, chunks, seq_before: int, options: dict) -> PutResult:
    """A retry of a put whose first attempt died after its body had arrived: its record if it committed, else write now."""
    with Store.open(store_root) as fresh:  # a fresh Store catches its index up with the log
        object_id, _size = fresh.write_object(chunks)
        for record in fresh.log_records(after=seq_before):
            same = (record.hash, record.content_type, record.meta) == (object_id, options["content_type"], options["meta"] or {})
            if record.key == key and record.op == "put" and same:
                return PutResult(record, unchanged=False)
        return _put_object(fresh, key, object_id, options)


def _put_object(store: Store, key: str, object_id: str, options: dict) -> PutResult:
    """Commit object_id under key with the request's options; If-Match decided atomically (conditions.py)."""
    fields = {name: value for name, value in options.items() if name not in ("if_match", "if_version")}
    return conditional_write(store, key, options, lambda if_version: store.put_object(key, object_id, if_version=if_version, **fields))


if __name__ == "__main__":  # a serve started before the split runs its workers as this module
    from .worker_process import main

    sys.exit(main())
