"""MD5s of concurrent uploads computed together, one per SIMD lane (S3's ETags; see _md5lanes.c).

S3 wants each part's MD5. One MD5 cannot go faster than its serial chain (OpenSSL: 0.5-0.8 GB/s on this
machine's cores), but aws-cli sends ten parts at once (all to one worker: the gateway routes an upload by its id),
so a worker holds several MD5s that can advance together: with AVX-512VL, 16 lanes hash 5.7x, 10 lanes 3.7x, 5 lanes
2.3x the bytes of hashlib per CPU-second.

Uploads do not reach their MD5 at the same moment (a pool thread's update takes well under a millisecond, and
the threads take turns), so hashing in the caller's thread would nearly always find one lane to fill. Instead
update() only queues the bytes (a view, no copy: the pieces are immutable) and returns; one thread per process
hashes what the uploads queued, a slice of equal length from each, once every stream that is open has bytes
waiting, once LANES have, or after GATHER_SECONDS. The write path never waits for it; digest() does,
and a stream more than QUEUE_LIMIT ahead of it waits too, so a slow hasher bounds the memory it holds.

Without the compiled module (no C compiler at install), or with IMSTORE_MD5LANES=0, new() is hashlib.md5.
"""

from __future__ import annotations

import hashlib
import os
import struct
import threading
import time
import weakref

try:
    from . import _md5lanes
except ImportError:  # built only where a C compiler was present at install (setup.py: optional)
    _md5lanes = None

__all__ = ["new", "compiled"]

# IMSTORE_MD5LANES=0: hashlib for every MD5 (benchmarks compare the two; a way out should the lanes misbehave)
_ENABLED = os.environ.get("IMSTORE_MD5LANES", "1") != "0"

_INITIAL = struct.pack("<4I", 0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476)
GATHER_SECONDS = 0.1  # the longest a queued byte waits for other streams to fill lanes (30 ms filled fewer)
QUEUE_LIMIT = 8 << 20  # bytes a stream may have queued before its update() waits for the hasher
LANES = _md5lanes.LANES if _md5lanes is not None else 1  # the widest pass of the compiled module (16)
MIN_SLICE = 64 << 10  # see _batch
INLINE_LIMIT = 64 << 10  # an update this small, with nothing queued before it, is hashed in the caller's thread


def compiled() -> bool:
    """True when the multi-lane module was built (and not turned off); otherwise new() is hashlib.md5."""
    return _md5lanes is not None and _ENABLED


class _Hasher:
    """The one thread that runs the lanes; streams queue views of their bytes in `pending`. One lock, two
    conditions, so that a queued piece wakes only the hasher and a hashed batch only a stream that waits."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.work = threading.Condition(self.lock)  # the hasher waits here for bytes
        self.progress = threading.Condition(self.lock)  # streams wait here: a full queue, or digest()
        self.waiters = 0  # streams waiting on progress
        self.open: weakref.WeakSet[LaneMD5] = weakref.WeakSet()  # streams that may still send bytes
        self.waiting: dict[LaneMD5, None] = {}  # streams with queued bytes, in the order they queued them
        self.thread: threading.Thread | None = None

    def submit(self, stream: LaneMD5, data) -> None:
        view = memoryview(data).cast("B")
        with self.lock:
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name="imstore-md5-lanes", daemon=True)
                self.thread.start()
            while stream.queued > QUEUE_LIMIT:
                self._wait_for_progress()
            stream.pending.append(view)
            stream.queued += len(view)
            if stream not in self.waiting:
                stream.since = time.monotonic()
                self.waiting[stream] = None
                self.work.notify()

    def drain(self, stream: LaneMD5) -> None:
        """Return once every byte the stream queued is hashed into its state."""
        with self.lock:
            if stream.queued:
                stream.urgent = True
                self.work.notify()
                while stream.queued:
                    self._wait_for_progress()
                stream.urgent = False
            if stream.error is not None:
                raise stream.error

    def _wait_for_progress(self) -> None:
        if not self.thread.is_alive():  # never hang a request on a thread that died
            raise RuntimeError("the MD5 lanes thread has stopped")
        self.waiters += 1
        try:
            self.progress.wait(1.0)
        finally:
            self.waiters -= 1

    def _batch(self) -> list:
        """Under the lock: (stream, slice) pairs to hash now, or [] to wait on."""
        ready = list(self.waiting)
        if not ready:
            return []
        full = len(ready) >= min(LANES, len(self.open)) or any(s.urgent for s in ready)
        if not full and time.monotonic() - min(s.since for s in ready) < GATHER_SECONDS:
            return []
        ready = ready[:LANES]
        # Equal lanes (no lane idles while another finishes), but not slivers: a lane's head shorter than
        # MIN_SLICE ends early rather than cut every other lane to it.
        length = max(min(len(s.pending[0]) for s in ready), MIN_SLICE)
        return [(s, s.pending[0][:length]) for s in ready]

    def _run(self) -> None:
        while True:
            with self.lock:
                batch = self._batch()
                while not batch:
                    oldest = min((s.since for s in self.waiting), default=None)
                    self.work.wait(None if oldest is None else max(0.0, oldest + GATHER_SECONDS - time.monotonic()))
                    batch = self._batch()
            error = None
            try:
                _md5lanes.update([s.state for s, _ in batch], [piece for _, piece in batch])
            except Exception as exc:  # the streams' digest() raises it: an MD5 never silently wrong
                error = exc
            with self.lock:
                for stream, piece in batch:
                    stream.error = stream.error or error
                    stream.pending[0] = stream.pending[0][len(piece) :]
                    if not stream.pending[0]:
                        stream.pending.pop(0)
                    stream.queued -= len(piece)
                    if stream.pending:
                        self.waiting[stream] = self.waiting.pop(stream)  # to the back: every stream gets its turn
                    else:
                        del self.waiting[stream]
                if self.waiters:
                    self.progress.notify_all()


_hasher = _Hasher()


class LaneMD5:
    """hashlib.md5's interface; the hasher thread advances the state. One stream: update it from one thread at a
    time (as one upload does); different streams from any threads. update() may return before its bytes are hashed,
    so they must not change afterwards (bytes, or views of bytes)."""

    name = "md5"
    digest_size = 16
    block_size = 64

    def __init__(self, data=b"") -> None:
        self.state = bytearray(_md5lanes.STATE_SIZE)
        self.state[:16] = _INITIAL
        self.pending: list[memoryview] = []  # queued, not hashed yet
        self.queued = 0
        self.since = 0.0  # when the first of pending was queued
        self.urgent = False  # digest() waits for this stream: hash it without waiting for others
        self.error: Exception | None = None
        with _hasher.lock:
            _hasher.open.add(self)
        if data:
            self.update(data)

    def update(self, data) -> None:
        if not len(data):
            return
        if len(data) < INLINE_LIMIT and not self.queued:  # a small body (most PutObjects): no hop to the hasher thread
            _md5lanes.update([self.state], [data])  # safe unlocked: the hasher touches only streams with bytes queued
        else:
            _hasher.submit(self, data)

    def close(self) -> None:
        """No more bytes will come (digest() does it too): the hasher stops waiting for this stream to fill a lane."""
        with _hasher.lock:
            _hasher.open.discard(self)
            _hasher.work.notify()

    def copy(self) -> LaneMD5:
        _hasher.drain(self)
        twin = LaneMD5()
        twin.state[:] = self.state
        return twin

    def digest(self) -> bytes:
        _hasher.drain(self)
        self.close()
        state = bytearray(self.state)
        (length,) = struct.unpack_from("<Q", state, 16)
        padding = b"\x80" + b"\0" * ((55 - length) % 64) + struct.pack("<Q", (length * 8) & (2**64 - 1))
        _md5lanes.update([state], [padding])  # into a copy of the state: digest() can be asked again, update() go on
        return bytes(state[:16])

    def hexdigest(self) -> str:
        return self.digest().hex()


def new(data=b""):
    """An MD5 with hashlib's interface, hashed in lanes with the other streams open at the same time."""
    if not compiled():
        return hashlib.md5(data, usedforsecurity=False)
    return LaneMD5(data)
