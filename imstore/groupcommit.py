"""Group commit: concurrent puts in one process share one log append and one fsync.

The first put to arrive becomes the leader: it takes the log lock, turns every
queued put into a record (checking each one's preconditions in queue order), and
appends them as one frame with one write() and one fsync. Every put is
acknowledged only after that fsync, exactly as a lone put would be; a failed
append fails every put of the frame. The leader keeps going until the queue is
empty, then steps down. Two puts of the same key never share a frame (the second
waits for the next one), so each decision sees the state its predecessor left.
Across processes the log's flock still orders writers, as before.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["GroupCommit", "PendingPut"]


@dataclass(eq=False)
class PendingPut:
    """One put waiting for a frame: decide(index), under the lock, returns its new record's fields or a finished PutResult."""

    key: str
    decide: Callable
    done: threading.Event = field(default_factory=threading.Event)
    result: object = None
    error: BaseException | None = None

    def outcome(self):
        if self.error is not None:
            raise self.error
        return self.result


class GroupCommit:
    """The queue of puts for one log in this process."""

    _registry: dict[str, GroupCommit] = {}
    _registry_lock = threading.Lock()

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: list[PendingPut] = []
        self._leading = False

    @classmethod
    def for_log(cls, log_path: str) -> GroupCommit:
        with cls._registry_lock:
            committer = cls._registry.get(log_path)
            if committer is None:
                committer = cls._registry[log_path] = cls()
            return committer

    def submit(self, pending: list[PendingPut], commit_batch: Callable[[list[PendingPut]], None]) -> None:
        """Queue pending (in order) and return once each one's frame is durable or failed (leading if nobody is).

        Each put's answer is then in its outcome(); several puts of one caller may share a frame.
        """
        with self._lock:
            self._queue.extend(pending)
            lead = not self._leading
            self._leading = True
        if not lead:
            for queued in pending:
                queued.done.wait()
            return
        try:
            while True:
                with self._lock:
                    batch, later, keys = [], [], set()
                    for queued in self._queue:
                        (later if queued.key in keys else batch).append(queued)
                        keys.add(queued.key)
                    self._queue = later
                    if not batch:
                        self._leading = False
                        break
                try:
                    commit_batch(batch)
                except BaseException as exc:
                    for queued in batch:
                        if queued.error is None and queued.result is None:
                            queued.error = exc
                finally:
                    for queued in batch:
                        queued.done.set()
        except BaseException:
            with self._lock:
                self._leading = False
            raise
