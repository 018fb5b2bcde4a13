"""Keeps the derived views up with the log: today the SQLite index.

The index is disposable: it remembers how far it has applied the log (offset,
seq, chain hash, and the checksum of the last frame it applied). Every use
catches it up from there; if that position no longer matches the log, or the
database is broken, it is rebuilt from the log, which is the truth.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from .errors import Unavailable
from .fsio import crash_point
from .index import Index, IndexState
from .log import Log
from .records import Frame, check_chain

__all__ = ["Indexer", "index_query"]

T = TypeVar("T")


class Indexer:
    """The index of one store, opened lazily, caught up with its log on every use."""

    def __init__(self, log: Log, path: Path, warnings: list[str]):
        self.log = log
        self.path = path
        self.warnings = warnings  # the Store's list: what the user should hear (a rebuild, a cut tail)
        self._index: Index | None = None
        self._seen_log_size = -1  # log size at the last catch-up: a change means another writer appended

    @property
    def index(self) -> Index:
        """The index, caught up with the log (opened, repaired or rebuilt as needed)."""
        if self._index is None:
            self._index = self._open()
            try:
                self.catch_up()
            except BaseException:
                self._index.close()  # open it again (and catch up) on the next use
                self._index = None
                raise
        return self._index

    def current(self) -> Index:
        """The index for a read: caught up again if the log changed since we last looked.

        A long-lived Store (a server worker) must see records appended by other
        processes, including one that died between its log fsync and its index update.
        """
        index = self.index
        if self.log.size() != self._seen_log_size:
            self.catch_up()
        return index

    def close(self) -> None:
        if self._index is not None:
            self._index.close()
            self._index = None

    def _open(self) -> Index:
        try:
            return Index(self.path)
        except sqlite3.DatabaseError:
            self.warnings.append("the index was unreadable; rebuilding it from the log")
            Index.remove_files(self.path)
            try:
                return Index(self.path)
            except sqlite3.Error as exc:
                raise Unavailable(f"cannot create the index at {self.path}: {exc}") from None
        except sqlite3.Error as exc:
            raise Unavailable(f"cannot open the index at {self.path}: {exc}") from None

    def catch_up(self, *, writer: bool = False) -> None:
        """Apply log frames the index has not seen; rebuild it if it disagrees with the log.

        A writer (holding the log lock) also cuts off a torn tail the scan found.
        """
        index = self._index
        assert index is not None
        try:
            # Fast path, no write transaction: the index already ends where the log ends.
            state = index.state()
            if state.log_end == self.log.size() and self._matches_log(state):
                return
            self._seen_log_size = self.log.size()
            state = index.begin()
            try:
                if not self._matches_log(state):
                    if state.log_end:
                        self.warnings.append("the index did not match the log; rebuilt it from the log")
                    index.clear()
                    state = index.state()
                prev, seq = state.last_hash, state.seq
                scan = self.log.scan(state.log_end)
                for frame in scan:
                    prev, seq = check_chain(frame, prev, seq)
                    index.apply(frame.records, frame.offset, frame.end, frame.checksum)
                index.commit()
            except BaseException:
                index.rollback()
                raise
        except sqlite3.Error as exc:
            raise Unavailable(f"the index cannot be updated: {exc}") from None
        if scan.torn_at is not None and writer:
            cut = self.log.size() - scan.torn_at
            self.log.repair_tail(scan.torn_at)
            self.warnings.append(
                f"the log ended in a torn record ({cut} bytes at offset {scan.torn_at}, an interrupted write); cut it off"
            )

    def _matches_log(self, state: IndexState) -> bool:
        """Does the last frame the index applied still sit, unchanged, where the index says it ends?"""
        if state.frame_offset < 0:
            return state.log_end == 0
        if self.log.size() < state.log_end:
            return False
        found = self.log.frame_end_at(state.frame_offset)
        return found is not None and found == (state.log_end, state.frame_checksum)

    def rebuild(self) -> int:
        """Rebuild the index from the log from scratch (the caller holds the log lock); returns the record count."""
        self.close()
        Index.remove_files(self.path)
        self._index = self._open()
        self.catch_up(writer=True)
        return self._index.count()

    def applied(self, frame: Frame) -> None:
        """Apply a frame this process just appended (under the lock).

        A reader may have applied it already (it is durable and visible). A failing
        index is left behind: the log is the truth and the index catches up later.
        """
        index = self.index
        try:
            if index.begin().log_end == frame.offset:
                index.apply(frame.records, frame.offset, frame.end, frame.checksum)
            index.commit()
            if self._seen_log_size == frame.offset:
                self._seen_log_size = frame.end  # our own record: no catch-up needed on the next read
        except sqlite3.Error:
            index.rollback()
        crash_point("index-updated")


def index_query(query: Callable[[], T]) -> T:
    """Run an index query; a failing database (EIO, vanished file) means the store is unavailable."""
    try:
        return query()
    except sqlite3.Error as exc:
        raise Unavailable(f"the index cannot be read: {exc}") from None
