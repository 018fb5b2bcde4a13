"""BLAKE3 of an upload's `object` from its start, hashed while its parts still arrive (S3-28).

Complete makes `object` the object itself (S3-10) and needs its BLAKE3 first: for 1 GiB ~0.1 s on two
cores, while the client waits with nothing else to do. The bytes of a part written in place never change
once its record is written (one claim per part number; a part sent again goes to a file of its own, and
Complete copies such a part into place, which `Uploads.assemble` reports), so a thread of the worker
hashes `object` from its start, part after part, as they land: Complete then hashes only the rest. This
is the worker's memory only (the gateway sends an upload's requests to one worker, S3-27); a Complete
on another worker, or one whose parts were not the ones hashed, hashes the whole file as before.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from ...hashing import blake3

__all__ = ["PrefixHashes", "HashedPrefix"]

READ_SIZE = 4 << 20  # bytes read and hashed at a time
MAX_UPLOADS = 64  # uploads followed at once; beyond, the one idle longest is dropped (its Complete hashes it all)


@dataclass
class HashedPrefix:
    """A BLAKE3 hasher fed the first `length` bytes of the file whose (st_dev, st_ino) is `inode`."""

    hasher: object
    length: int
    inode: tuple[int, int]


@dataclass
class _Upload:
    fd: int  # `object`, read-only
    inode: tuple[int, int]
    stride: int
    landed: set[int] = field(default_factory=set)  # parts in place, not hashed yet
    # One thread: BLAKE3's own pool woke its threads ~17 times per 4 MiB read (4,400 context switches a GiB) on cores
    # the copy keeps busy; with it the copy took 1.6% longer (A/B, 2 x 7-9 rounds)
    hasher: object = field(default_factory=blake3)
    length: int = 0  # bytes hashed from the start: whole parts
    busy: bool = False  # the thread reads or hashes it now, outside the lock
    failed: bool = False

    @property
    def next_landed(self) -> bool:
        """The part after those hashed has landed: there is work for the thread."""
        return not self.failed and self.length // self.stride + 1 in self.landed


class PrefixHashes:
    """Each followed upload's hashed prefix, advanced by one thread of the process."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.uploads: OrderedDict[str, _Upload] = OrderedDict()
        self.thread: threading.Thread | None = None

    def landed(self, upload_id: str, path: str | os.PathLike, number: int, stride: int) -> None:
        """Part `number` is in place, at (number-1)*stride of `object` (path), and its record is written."""
        with self.lock:
            upload = self.uploads.get(upload_id)
            if upload is None:
                try:
                    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                except OSError:
                    return  # completed or aborted meanwhile
                stat = os.fstat(fd)
                upload = self.uploads[upload_id] = _Upload(fd, (stat.st_dev, stat.st_ino), stride)
                self._evict()
            if upload.stride != stride or upload.failed:
                return
            self.uploads.move_to_end(upload_id)
            upload.landed.add(number)
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name="imstore-prefix-hash", daemon=True)
                self.thread.start()
            self.changed.notify()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until every part that landed is hashed (tests, and nothing else, need to know): False on timeout."""
        deadline = time.monotonic() + timeout
        with self.lock:
            while any(upload.busy or upload.next_landed for upload in self.uploads.values()):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.changed.wait(left)
        return True

    def take(self, upload_id: str) -> HashedPrefix | None:
        """Stop following the upload; what was hashed of it, or None. Called by Complete with `object` held exclusively."""
        with self.lock:
            while (upload := self.uploads.get(upload_id)) is not None and upload.busy and self.thread.is_alive():
                self.changed.wait(1.0)
            if upload is None:
                return None
            self._drop(upload_id)
            if upload.failed or upload.busy or not upload.length:  # busy: its thread died mid-part, the hasher is past `length`
                return None
            return HashedPrefix(upload.hasher, upload.length, upload.inode)

    def forget(self, upload_id: str) -> None:
        """Aborted, or expired: stop following it."""
        with self.lock:
            upload = self.uploads.get(upload_id)
            if upload is not None and not upload.busy:
                self._drop(upload_id)
            elif upload is not None:
                upload.failed = True  # the thread drops it when it is done with it

    def _drop(self, upload_id: str) -> None:
        """Under the lock: stop following the upload and close its file."""
        os.close(self.uploads.pop(upload_id).fd)

    def _evict(self) -> None:
        """Under the lock: the oldest uploads beyond MAX_UPLOADS go (the newest never: at most one is busy)."""
        for upload_id in list(self.uploads):
            if len(self.uploads) <= MAX_UPLOADS:
                return
            if not self.uploads[upload_id].busy:
                self._drop(upload_id)

    def _next(self) -> tuple[str, _Upload] | None:
        """Under the lock: an upload whose next part has landed, marked busy, or None."""
        for upload_id, upload in self.uploads.items():
            if upload.next_landed:
                upload.busy = True
                return upload_id, upload
        return None

    def _run(self) -> None:
        buffer = bytearray(READ_SIZE)
        while True:
            with self.lock:
                while (work := self._next()) is None:
                    self.changed.wait()
            upload_id, upload = work
            try:
                _hash_span(upload, buffer, upload.length, upload.stride)
            except Exception:  # noqa: BLE001 - a read that failed: Complete hashes the whole file, as without this
                upload.failed = True
            finally:
                with self.lock:
                    upload.busy = False
                    upload.landed.discard(upload.length // upload.stride)
                    if upload.failed and self.uploads.get(upload_id) is upload:
                        self._drop(upload_id)
                    self.changed.notify_all()


def _hash_span(upload: _Upload, buffer: bytearray, start: int, length: int) -> None:
    """Feed [start, start+length) of the upload's file to its hasher; its length grows only by whole parts."""
    view = memoryview(buffer)
    done = 0
    while done < length:
        count = os.preadv(upload.fd, [view[: min(len(buffer), length - done)]], start + done)
        if count == 0:
            raise OSError("the object is shorter than its parts")
        upload.hasher.update(view[:count])
        done += count
    upload.length = start + length
