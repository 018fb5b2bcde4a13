"""Small PUTs of one worker, written in batches by one pool thread at a time.

With a thread per PUT, sixteen concurrent puts meant sixteen threads taking turns
on the GIL around every system call of every put; that cost more CPU than the puts
themselves (bench/bench_serve.py: ~1.6 ms of worker CPU per PUT). Here the event
loop queues each small PUT whose body it has read; one pool call takes everything
queued and hands it to Store.put_many (objects durable, then one log frame and one
fsync for all of them). While that call runs the next batch gathers: classic group
commit, so the batch grows with the load and a lone PUT is written at once.

Every PUT keeps its own answer: a refused precondition or bad input fails that
PUT only, and each is acknowledged only after the fsync of its frame.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from ..errors import Unavailable
from ..store import PutResult, Store

__all__ = ["PutBatcher"]

MAX_BATCH = 64  # puts per Store.put_many call: bounds one frame and one call's latency


class PutBatcher:
    """The queue of small PUTs waiting for this worker's next batch."""

    def __init__(self, run_in_pool: Callable, store: Callable[[], Store], after: Callable[[Store], None]):
        self._run_in_pool = run_in_pool  # async (function, *args) -> result, on the worker's pool
        self._store = store  # the calling pool thread's Store
        self._after = after  # called with that Store after each batch (its warnings go to stderr)
        self._queue: list[tuple[str, bytes, dict, asyncio.Future]] = []
        self._writer: asyncio.Task | None = None

    async def put(self, key: str, data: bytes, options: dict) -> PutResult:
        """Queue one put and wait for its answer (its frame is durable when this returns)."""
        future = asyncio.get_running_loop().create_future()
        self._queue.append((key, data, options, future))
        if self._writer is None:
            self._writer = asyncio.ensure_future(self._write_all())
        return await future

    async def _write_all(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
                try:
                    answers = await self._run_in_pool(self._write, [(key, data, options) for key, data, options, _ in batch])
                except Exception as exc:  # the append failed (or a bug): every put of the batch fails with it
                    answers = [exc] * len(batch)
                for (*_, future), answer in zip(batch, answers, strict=True):
                    if future.done():  # its client went away: the put stands, nobody to tell
                        continue
                    if isinstance(answer, BaseException):
                        future.set_exception(answer)
                    else:
                        future.set_result(answer)
        finally:
            self._writer = None
            if self._queue and asyncio.current_task().cancelling():  # the loop is stopping: these never started
                queued, self._queue = self._queue, []
                for *_, future in queued:
                    if not future.done():
                        future.set_exception(Unavailable("the worker is stopping; nothing was written, retry the request"))

    def _write(self, puts: list[tuple[str, bytes, dict]]) -> list[PutResult | Exception]:
        store = self._store()
        try:
            return store.put_many(puts)
        finally:
            self._after(store)
