"""The gateway's memory path: GETs it answers without a worker, and what it keeps for them.

Two kinds of answers are kept, each only after the gateway has hashed the bytes
itself: small objects by full id (immutable, hot.py) and latest versions by key
while the log's stamp is unchanged (latest.py). A hit is found from the raw request
target alone, before any route matching, so that a hit costs a dict lookup, the
token check, the log stamp (keys) and one write (wire.py). `Cache-Control: no-cache`
on a request, or any conditional or Range header, sends it to a worker as usual.
"""

from __future__ import annotations

import re

from ..hashing import OBJECT_ID_LEN, hash_bytes
from .hot import HotObjects
from .httpserver import ClientReads
from .latest import LatestAnswers, LogStamps, Stamp
from .protocol import WORKER_HEADER
from .wire import Prepared, prepare

__all__ = ["GatewayMemory", "needs_worker", "is_full_id", "OBJECTS_PREFIX", "KEYS_PREFIX"]

OBJECTS_PREFIX = "/v1/objects/"
KEYS_PREFIX = "/v1/keys/"
# Request headers that make a GET something other than "the whole object": a worker answers those.
NOT_FROM_MEMORY = ("Range", "If-Range", "If-None-Match", "If-Match", "If-Modified-Since", "If-Unmodified-Since")
_FULL_ID = re.compile(r"[0-9a-f]+")


def is_full_id(text: str) -> bool:
    return len(text) == OBJECT_ID_LEN and _FULL_ID.fullmatch(text) is not None


def needs_worker(headers) -> bool:
    """A request a kept answer does not answer: a range, a condition, or a client asking past caches."""
    return any(name in headers for name in NOT_FROM_MEMORY) or "no-cache" in headers.get("Cache-Control", "")


def without_worker_header(headers: dict) -> dict:
    return {name: value for name, value in headers.items() if name != WORKER_HEADER}


class GatewayMemory:
    """Kept v1 answers: objects by full id, latest versions by key target."""

    def __init__(self, store_root: str) -> None:
        self.objects: HotObjects[Prepared] = HotObjects()
        # One stat of the log per batch of requests read together, shared with the S3 port (s3/memory.py).
        self.stamps = LogStamps(store_root, reads=lambda: ClientReads.count)
        self.latest = LatestAnswers(store_root, stamps=self.stamps)
        self.hits = {"object": 0, "key": 0, "s3": 0}  # answers served from memory, by route (for /metrics)

    def find(self, raw_target: str) -> tuple[str, Prepared] | None:
        """(route name, kept answer) for a GET of raw_target, or None: a worker answers it."""
        if raw_target.startswith(OBJECTS_PREFIX):
            hit = self.objects.get(raw_target[len(OBJECTS_PREFIX) :], count=False)  # a query or a prefix is never a kept id
            return None if hit is None else ("object", hit[0])
        if raw_target.startswith(KEYS_PREFIX) and "?" not in raw_target:
            prepared = self.latest.get(raw_target, self.latest.stamp())
            return None if prepared is None else ("key", prepared)
        return None

    def stamp(self) -> Stamp | None:
        """The log's stamp before a key GET is forwarded (see latest.py)."""
        return self.latest.stamp()

    def keep_object(self, object_id: str, headers: dict, data: bytes) -> None:
        """Remember a relayed object for repeat GETs, once its bytes hash to its id here too."""
        if len(data) <= HotObjects.MAX_OBJECT and hash_bytes(data) == object_id:
            prepared = prepare(without_worker_header(headers), data)
            if prepared is not None:
                self.objects.put(object_id, prepared, data)

    def keep_latest(self, target: str, stamp: Stamp | None, headers: dict, data: bytes) -> None:
        self.latest.keep(target, stamp, without_worker_header(headers), data)
