"""The gateway's memory of latest-version answers by key, valid while the store's log is unchanged.

The latest version of a key changes only when the log changes (every put and
delete appends a frame). So a relayed answer to `GET /v1/keys/KEY` can be kept,
tagged with the log's stamp (inode, size, mtime) taken *before* the request was
forwarded, and answered again while the log's stamp is still that one: one
`stat` per batch of requests read together (LogStamps). The first request that
sees another stamp drops every kept answer. Why the stamp from before: a write that commits while the request is at
a worker changes the stamp, so an answer that may predate it is never served
(a client that has seen version N, by its own write or a read, never gets N-1).

Kept bytes hashed to the answer's ETag (the version's object id) here before
they were kept, as for objects by id (hot.py). Answers marked stale, partial
or conditional ones are never kept. The S3 port keeps its own answers the same
way, with its own check of the bytes against its ETag (s3/memory.py).
"""

from __future__ import annotations

import os
from collections.abc import Callable

from ..hashing import OBJECT_ID_LEN, hash_bytes
from ..layout import LOG_SEGMENT
from .hot import HotObjects
from .protocol import STALE_HEADER, object_id_of_etag
from .wire import Prepared, prepare

__all__ = ["LatestAnswers", "LogStamps", "log_stamp", "key_answer_verified"]

Stamp = tuple[int, int, int]
ENTRY_OVERHEAD = 1024  # bytes counted per kept answer for its headers and target (an empty object still costs memory)


def log_stamp(store_root: str) -> Stamp | None:
    """Where the log is now (inode, size, mtime ns); None when it cannot be seen (the store is away)."""
    return _stamp_of(os.path.join(store_root, LOG_SEGMENT))


def _stamp_of(path: str) -> Stamp | None:
    try:
        status = os.stat(path)
    except OSError:
        return None
    return (status.st_ino, status.st_size, status.st_mtime_ns)


def key_answer_verified(headers: dict, data: bytes) -> bool:
    """A v1 key answer's bytes hash to the object id in its ETag ("vN-<id>", H1)."""
    object_id = object_id_of_etag(headers.get("ETag", ""))
    return len(object_id) == OBJECT_ID_LEN and hash_bytes(data) == object_id


class LogStamps:
    """The log's stamp, taken again only when a client's bytes have been read since the last one (reads: a
    count of reads, ClientReads in the gateway; None: on every call). A stamp taken after the last read is
    younger than every request read so far, so it is as good as a new one for each of them: whatever
    committed before such a request was sent had changed the log before that stamp was taken."""

    def __init__(self, store_root: str, reads: Callable[[], int] | None = None) -> None:
        self.path = os.path.join(store_root, LOG_SEGMENT)  # joined once: it is stat'ed for GETs by key
        self.reads = reads
        self._taken: tuple[int, Stamp | None] | None = None  # (reads count, stamp)

    def now(self) -> Stamp | None:
        if self.reads is None:
            return _stamp_of(self.path)
        count = self.reads()
        taken = self._taken
        if taken is not None and taken[0] == count:
            return taken[1]
        stamp = _stamp_of(self.path)
        self._taken = (count, stamp)
        return stamp


class LatestAnswers:
    """Answers (prepared headers and verified bytes) to latest-version GETs, for one log stamp at a time."""

    MAX_BYTES = 32 << 20

    def __init__(self, store_root: str, max_bytes: int = MAX_BYTES,
                 verified: Callable[[dict, bytes], bool] = key_answer_verified, stamps: LogStamps | None = None) -> None:  # fmt: skip
        self.store_root = store_root
        self.stamps = stamps or LogStamps(store_root)
        self.verified = verified
        self._answers: HotObjects[Prepared] = HotObjects(max_bytes, entry_overhead=ENTRY_OVERHEAD)
        self._stamp: Stamp | None = None

    def stamp(self) -> Stamp | None:
        """The log's stamp now; kept answers of an older one are dropped."""
        now = self.stamps.now()
        if now != self._stamp:
            self._answers.clear()
            self._stamp = now
        return now

    def get(self, target: str, stamp: Stamp | None) -> Prepared | None:
        """The kept answer for a request target, if the log is still at the stamp it was kept under."""
        if stamp is None or stamp != self._stamp:
            return None
        hit = self._answers.get(target, count=False)  # the gateway counts what it serves (memory.py)
        return None if hit is None else hit[0]

    def keep(self, target: str, stamp: Stamp | None, headers: dict, data: bytes) -> None:
        """Keep a 200 answer relayed for target, which was forwarded when the log was at stamp."""
        if stamp is None or stamp != self._stamp or STALE_HEADER in headers or len(data) > HotObjects.MAX_OBJECT:
            return
        if not self.verified(headers, data):
            return
        prepared = prepare(headers, data)
        if prepared is not None:
            self._answers.put(target, prepared, data)
