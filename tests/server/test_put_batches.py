"""Small PUTs written in batches by a worker (server/putbatch.py): grouping, and each PUT's own answer."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

from imstore import Store
from imstore.errors import PreconditionFailed
from imstore.server.putbatch import PutBatcher

from .conftest import key_url


def test_puts_that_arrive_while_a_batch_is_written_go_together_into_the_next(store_path):
    """The first put is written alone at once; the ones queued meanwhile share one put_many call."""
    store = Store.open(store_path)
    calls: list[list[str]] = []
    first_started, release_first = threading.Event(), threading.Event()
    real_put_many = store.put_many

    def recording_put_many(puts):
        calls.append([key for key, _data, _options in puts])
        if len(calls) == 1:
            first_started.set()
            assert release_first.wait(10)
        return real_put_many(puts)

    store.put_many = recording_put_many
    pool = ThreadPoolExecutor(4)

    async def scenario():
        loop = asyncio.get_running_loop()
        batcher = PutBatcher(lambda function, *args: loop.run_in_executor(pool, function, *args), lambda: store, lambda _store: None)
        first = asyncio.ensure_future(batcher.put("first", b"1", {}))
        assert await loop.run_in_executor(None, first_started.wait, 10)
        later = [asyncio.ensure_future(batcher.put(f"later{number}", b"x%d" % number, {})) for number in range(5)]
        refused = asyncio.ensure_future(batcher.put("first", b"again", {"if_absent": True}))
        await asyncio.sleep(0)  # let them all queue
        release_first.set()
        results = await asyncio.gather(first, *later, return_exceptions=True)
        refusal = await asyncio.gather(refused, return_exceptions=True)
        return results, refusal[0]

    try:
        results, refusal = asyncio.run(scenario())
    finally:
        pool.shutdown()
    assert calls == [["first"], ["later0", "later1", "later2", "later3", "later4", "first"]]
    assert [result.version.key for result in results] == ["first"] + [f"later{number}" for number in range(5)]
    assert isinstance(refusal, PreconditionFailed)  # one refusal fails only its own put
    assert store.get("later3") == b"x3"
    store.close()


def test_concurrent_puts_through_the_server_each_get_their_own_answer(start):
    server = start("--workers", "2")
    assert server.request("PUT", key_url("taken"), b"old").status == 201
    requests = (
        [("shared", b"shared %d" % number, {}) for number in range(16)]
        + [(f"new/{number}", b"new %d" % number, {}) for number in range(16)]
        + [("taken", b"refused %d" % number, {"If-None-Match": "*"}) for number in range(8)]
        + [(f"absent/{number}", b"refused", {"If-Match": '"v3"'}) for number in range(8)]
    )  # fmt: skip
    with ThreadPoolExecutor(24) as pool:
        replies = list(pool.map(lambda request: server.request("PUT", key_url(request[0]), request[1], headers=request[2]), requests))
    statuses = [reply.status for reply in replies]
    assert statuses == [201] * 32 + [412] * 16, [reply.body for reply in replies if reply.status not in (201, 412)]
    shared_versions = sorted(int(reply.headers["X-Imstore-Version"]) for reply in replies[:16])
    assert shared_versions == list(range(1, 17))  # gap-free, no version given twice
    assert all(f'"v{reply.json()["version"]}-{reply.json()["hash"]}"' == reply.headers["ETag"] for reply in replies[:32])
    with Store.open(server.store) as store:
        assert len(store.history("shared")) == 16 and store.get("new/9") == b"new 9"
        assert store.get("taken") == b"old"
        assert [record.key for record in store.log_records()].count("taken") == 1
        assert store.verify().ok
