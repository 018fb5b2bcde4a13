"""Verified bytes of small, recently read objects, kept in a worker's memory."""

from __future__ import annotations

import threading
from collections import OrderedDict

from ..objects import ObjectReader

__all__ = ["HotObjects"]


class HotObjects:
    """Verified bytes of small, recently read objects, by full id.

    Objects never change and these bytes hashed right when they were read, so a
    hit is served without touching the disk or the thread pool. Bounded in bytes.
    """

    MAX_OBJECT = 256 << 10
    MAX_BYTES = 64 << 20

    def __init__(self) -> None:
        self._entries: OrderedDict[str, tuple[ObjectReader, bytes]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, object_id: str) -> tuple[ObjectReader, bytes] | None:
        with self._lock:
            entry = self._entries.get(object_id)
            if entry is not None:
                self._entries.move_to_end(object_id)
            return entry

    def put(self, reader: ObjectReader, data: bytes) -> None:
        if len(data) > self.MAX_OBJECT:
            return
        with self._lock:
            if reader.object_id in self._entries:
                return
            self._entries[reader.object_id] = (reader, data)
            self._bytes += len(data)
            while self._bytes > self.MAX_BYTES:
                _, (_, dropped) = self._entries.popitem(last=False)
                self._bytes -= len(dropped)
