"""Verified bytes of small, recently read objects, kept in a server process's memory.

Objects never change, and these bytes were checked against their id before they
were kept, so a hit needs neither the disk nor (in the gateway) a worker.
A worker keeps (ObjectReader, bytes); the gateway keeps (response headers, bytes).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Generic, TypeVar

__all__ = ["HotObjects"]

Extra = TypeVar("Extra")


class HotObjects(Generic[Extra]):
    """An LRU of verified object bytes by full id, bounded in bytes."""

    MAX_OBJECT = 256 << 10
    MAX_BYTES = 64 << 20

    def __init__(self, max_bytes: int = MAX_BYTES, entry_overhead: int = 0) -> None:
        self.max_bytes = max_bytes
        self.entry_overhead = entry_overhead  # counted per entry besides its bytes: many empty ones still fill it
        self._entries: OrderedDict[str, tuple[Extra, bytes]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0

    def get(self, object_id: str, count: bool = True) -> tuple[Extra, bytes] | None:
        """The entry, or None; count=False: the caller counts the hit once it has used it."""
        with self._lock:
            entry = self._entries.get(object_id)
            if entry is not None:
                self._entries.move_to_end(object_id)
                self.hits += count
            return entry

    def put(self, object_id: str, extra: Extra, data: bytes) -> None:
        """Keep data, which the caller has checked hashes to object_id."""
        if len(data) > self.MAX_OBJECT or len(data) > self.max_bytes:
            return
        with self._lock:
            if object_id in self._entries:
                return
            self._entries[object_id] = (extra, data)
            self._bytes += len(data) + self.entry_overhead
            while self._bytes > self.max_bytes:
                _, (_, dropped) = self._entries.popitem(last=False)
                self._bytes -= len(dropped) + self.entry_overhead

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0
