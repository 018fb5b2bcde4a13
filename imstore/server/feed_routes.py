"""A worker's replication routes: a store's description, its raw log frames (with a long poll), its objects.

Thin over feed.py, which a path source uses too, so a URL and a path serve the
same bytes. They read the log and object files only (no index): a stream that
spans several pool calls never touches another thread's SQLite connection.
"""

from __future__ import annotations

import asyncio
import base64
import os
import sys
import time
from pathlib import Path
from urllib.parse import quote

from aiohttp import web

from .. import layout
from ..errors import NotFound
from ..feed import (
    EPOCH_HEADER,
    HEAD_SEQ_HEADER,
    LOG_END_HEADER,
    MAX_WAIT,
    NoFrameThere,
    describe,
    object_stream,
    open_local,
    pack_file_path,
    pack_listing,
    read_frames,  # fmt: skip
)
from ..log import Log
from ..records import MAX_FRAME
from .bodies import json_response
from .headers import non_negative
from .protocol import SENDFILE_FILE, SENDFILE_OFFER, RouteMatch

__all__ = ["FeedRoutes"]

DEFAULT_ROUND = 8 << 20  # bytes of frames per answer unless max_bytes asks for fewer
_GROWTH_POLL = 0.01  # how often a long poll looks at the log's size (a stat: cheap)


class FeedRoutes:
    """Mixed into WorkerApp: handlers for GET /v1/replication, /v1/replication/log, /v1/replication/objects
    and /v1/replication/packs[/<file>] (a clone takes packs whole: R13)."""

    store_root: str

    async def call(self, function, *args): ...  # WorkerApp's: run in the pool

    def store(self): ...  # WorkerApp's: this pool thread's Store

    def _log(self) -> Log:
        log = getattr(self, "_feed_log", None)
        if log is None:
            log = self._feed_log = Log(Path(self.store_root) / layout.LOG)  # stateless reads: one for every thread
        return log

    async def _replication_get(self, request: web.BaseRequest, matched: RouteMatch) -> web.StreamResponse:
        described = await self.call(describe, Path(self.store_root))
        tokens = described["tokens"]
        return json_response({
            "store_id": described["store_id"],
            "config": base64.b64encode(described["config"]).decode("ascii"),
            "log_end": described["log_end"],
            "tokens": base64.b64encode(tokens).decode("ascii") if tokens is not None else None,
        }, headers={"Cache-Control": "no-store"})  # fmt: skip

    async def _replication_log_get(self, request: web.BaseRequest, matched: RouteMatch) -> web.StreamResponse:
        query = matched.query()
        start = non_negative(query.get("from", "0"), "from")
        max_bytes = min(non_negative(query.get("max_bytes", str(DEFAULT_ROUND)), "max_bytes") or 1, MAX_FRAME)
        wait = min(float(non_negative(query.get("wait", "0"), "wait")), MAX_WAIT)
        log = self._log()
        deadline = time.monotonic() + wait
        # The long poll: a standby waits here for the next frame instead of asking again and again.
        while log.end() <= start and time.monotonic() < deadline:
            await asyncio.sleep(_GROWTH_POLL)
        try:
            data = await self.call(read_frames, log, start, max_bytes)
        except NoFrameThere as exc:
            return web.Response(status=416, text=str(exc), headers={LOG_END_HEADER: str(exc.log_end)})
        seq, epoch = await self.call(self._head_seq)
        end = start + len(data) if data else log.end()
        headers = {"Content-Type": "application/octet-stream", LOG_END_HEADER: str(max(end, log.end())), HEAD_SEQ_HEADER: str(seq),
                   EPOCH_HEADER: str(epoch), "Cache-Control": "no-store"}  # fmt: skip
        return web.Response(body=data, headers=headers)

    def _head_seq(self) -> tuple[int, int]:
        """The last record's seq (a standby's lag in records is the difference) and the store's epoch (R10)."""
        index = self.store().indexer.current()
        return index.state().seq, index.epoch()

    async def _replication_objects_get(self, request: web.BaseRequest, matched: RouteMatch) -> web.StreamResponse:
        query = matched.query()
        start, end = non_negative(query.get("from", "0"), "from"), non_negative(query.get("to", "0"), "to")
        # Its own object store: the stream moves between pool threads, and a PackSet is not shared across threads.
        log, objects = await self.call(open_local, Path(self.store_root))
        try:
            return await self._send_objects(request, object_stream(log, objects, start, end))
        finally:
            if objects.packs is not None:
                objects.packs.close()

    async def _send_objects(self, request: web.BaseRequest, pieces) -> web.StreamResponse:
        try:
            piece = await self.call(next, pieces, None)
        except NoFrameThere as exc:
            return web.Response(status=416, text=str(exc), headers={LOG_END_HEADER: str(exc.log_end)})
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream", "Cache-Control": "no-store"})
        await response.prepare(request)
        try:
            while piece is not None:
                await response.write(piece)
                piece = await self.call(next, pieces, None)
        except Exception as exc:  # a damaged or vanished object: cut the stream, the receiver refuses what it got
            print(f"imstore worker: object stream cut off: {exc}", file=sys.stderr, flush=True)
            if request.transport is not None:
                request.transport.abort()
            raise ConnectionError("object stream cut off") from None
        await response.write_eof()
        return response

    async def _replication_packs_get(self, request: web.BaseRequest, matched: RouteMatch) -> web.StreamResponse:
        listing = await self.call(pack_listing, Path(self.store_root))
        return json_response({"packs": [{"name": name, "size": size} for name, size in listing]}, headers={"Cache-Control": "no-store"})

    async def _replication_pack_get(self, request: web.BaseRequest, matched: RouteMatch) -> web.StreamResponse:
        """A pack or its index, as stored. Not hashed here: the receiver checks every object against the
        index and the index against its trailer (packcopy.py), so sending it is a plain file copy."""
        path = pack_file_path(Path(self.store_root), matched.raw_param)
        headers = {"Content-Type": "application/octet-stream", "Cache-Control": "no-store"}
        if request.headers.get(SENDFILE_OFFER) == "1":
            try:
                size = os.stat(path).st_size
            except FileNotFoundError:
                size = None
            if size is not None:
                headers[SENDFILE_FILE] = f"0 {size} {quote(str(path))}"  # the gateway sends it with sendfile(2)
                return web.Response(headers=headers)
        if not path.exists():
            raise NotFound(f"no pack file {matched.raw_param}")
        return web.FileResponse(path, headers=headers)
