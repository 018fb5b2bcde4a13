"""The local log backend: one segment file of frames, plus the writers' lock.

The format (frames, records, the hash chain) is in records.py; this module only
reads and writes the file. An incomplete *last* frame is a torn tail (a crash
mid-append): readers stop before it quietly, a writer holding the lock cuts it
off and says so. A damaged frame followed by a good one is mid-log corruption:
a plain scan raises CorruptLog; scan(skip_damage=True), which the indexer and
verify use, steps over it and lists it, so damage costs only what is damaged.
A complete last frame that rotted is never taken for a torn tail.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import CorruptLog, OutcomeUnknown, Unavailable, from_os_error
from .fsio import crash_point, fsync_fd, require_directory, write_all
from .hashing import checksum16
from .records import (  # re-exported: the log's format used to live here
    GENESIS,
    HEADER,
    HEADER_SIZE,
    MAX_FRAME,
    Frame,
    Record,
    batch_payload,
    decode_payload,
    decode_record,
    encode_record,
    frame_bytes,
    make_frame,
    plausible_payload_start,
)

__all__ = ["Record", "Frame", "Log", "Scan", "GENESIS", "HEADER", "HEADER_SIZE", "MAX_FRAME", "encode_record", "decode_payload",
           "frame_bytes", "batch_payload", "SEGMENT_NAME", "LOCK_NAME"]

SEGMENT_NAME = "00000000000000000000.log"
LOCK_NAME = "LOCK"
LOCK_TIMEOUT_ENV = "IMSTORE_LOCK_TIMEOUT"
DEFAULT_LOCK_TIMEOUT = 60.0  # seconds a writer waits for the writers' lock before giving up (exit 6 / 503)
# How far past a damaged frame we look for a good one before calling it a torn tail.
MAX_TAIL_SCAN = 256 << 20

class Scan:
    """One pass over the log's frames: iterate it; once done, `torn_at` is where a torn tail starts (or None).

    The result lives on the scan, not on the Log, so two scans of one Log (a
    catch-up and a log shipper) never see each other's answer.
    """

    def __init__(self, log: Log, start: int, end: int | None, skip_damage: bool = False):
        self.torn_at: int | None = None
        # With skip_damage, a damaged frame that a good one follows is stepped over rather than
        # raised: (offset, end, message) goes in `damaged` (end_damaged: the log's end rotted).
        self.skip_damage = skip_damage
        self.damaged: list[tuple[int, int, str]] = []
        self.end_damaged = False
        self._frames = log._frames(self, start, end)

    def __iter__(self) -> Iterator[Frame]:
        return self._frames


class Log:
    """The log directory: one segment file and the writers' lock (the local LogBackend)."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.path = self.directory / SEGMENT_NAME
        self.lock_path = self.directory / LOCK_NAME
        self.lock_timeout = lock_timeout_from_env()
        # The torn tail found by the last scan that ran to its end (kept for older callers; use Scan.torn_at).
        self.torn_at: int | None = None

    def _check_directory(self) -> None:
        require_directory(self.directory, "the store's log directory")

    def end(self) -> int:
        """Where the log ends (the offset the next frame is appended at, torn bytes included)."""
        return self.size()

    def stamp(self) -> tuple[int, int, int]:
        """(size, inode, mtime ns): changes when the log is appended to, cut or replaced (one stat)."""
        try:
            status = os.stat(self.path)
        except FileNotFoundError:
            self._check_directory()
            return (0, 0, 0)
        except OSError as exc:
            raise from_os_error(exc, "reading the log") from None
        return (status.st_size, status.st_ino, status.st_mtime_ns)

    def size(self) -> int:
        try:
            return os.stat(self.path).st_size
        except FileNotFoundError:
            self._check_directory()
            return 0
        except OSError as exc:
            raise from_os_error(exc, "reading the log") from None

    # ------------------------------------------------------------ reading
    def frame_header_at(self, offset: int) -> tuple[int, bytes] | None:
        """(payload length, checksum) of the frame at offset, without reading its payload."""
        try:
            with open(self.path, "rb") as handle:
                handle.seek(offset)
                header = handle.read(HEADER_SIZE)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise from_os_error(exc, "reading the log") from None
        return HEADER.unpack(header) if len(header) == HEADER_SIZE else None

    def read_frame_at(self, offset: int) -> Frame | None:
        """The frame starting at offset, or None if it is not (yet) complete and valid."""
        try:
            with open(self.path, "rb") as handle:
                handle.seek(offset)
                header = handle.read(HEADER_SIZE)
                if len(header) < HEADER_SIZE:
                    return None
                length, checksum = HEADER.unpack(header)
                if length == 0 or length > MAX_FRAME:
                    return None
                payload = handle.read(length)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise from_os_error(exc, "reading the log") from None
        if len(payload) < length or checksum16(payload) != checksum:
            return None
        return make_frame(offset, payload, decode_payload(payload), checksum)

    def check_frames(self, start: int, max_frames: int, end: int) -> tuple[int, int | None]:
        """Check the checksums of up to max_frames whole frames from start (a frame boundary), not past end.

        Returns (where the check stopped, the offset of the first damaged frame or None).
        Cheaper than scan: one read, and no record is decoded. For the writers' rolling check.
        """
        try:
            with open(self.path, "rb") as handle:
                handle.seek(start)
                window = handle.read(min(end - start, 1 << 20))
                offset, position = start, 0
                for _ in range(max_frames):
                    if offset >= end:
                        break
                    if position + HEADER_SIZE > len(window):  # the window ends: read on from here
                        handle.seek(offset)
                        window, position = handle.read(min(end - offset, 1 << 20)), 0
                    if position + HEADER_SIZE > len(window):
                        return offset, offset
                    length, checksum = HEADER.unpack_from(window, position)
                    if length == 0 or offset + HEADER_SIZE + length > end:
                        return offset, offset
                    payload_start = position + HEADER_SIZE
                    if payload_start + length <= len(window):
                        payload = window[payload_start : payload_start + length]
                    else:
                        handle.seek(offset + HEADER_SIZE)
                        payload = handle.read(length)
                        window, position = b"", 0
                    if checksum16(payload) != checksum:
                        return offset, offset
                    offset += HEADER_SIZE + length
                    position = payload_start + length if window else 0
                return offset, None
        except OSError as exc:
            raise from_os_error(exc, "reading the log") from None

    def read_record(self, offset: int, length: int) -> Record:
        """The record whose payload is at offset (as the index remembers it); CorruptLog if it is not one."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                payload = os.pread(fd, length, offset)
            finally:
                os.close(fd)
        except FileNotFoundError:
            self._check_directory()
            payload = b""
        except OSError as exc:
            raise from_os_error(exc, "reading the log") from None
        if len(payload) < length or length <= 0:
            raise CorruptLog(f"the log ends before the record the index places at offset {offset}")
        try:
            return decode_record(payload)
        except CorruptLog:
            raise CorruptLog(f"the log record at offset {offset} is damaged") from None

    def frame_end_at(self, offset: int) -> tuple[int, bytes] | None:
        """(end, checksum) of the frame whose header is at offset, from its header alone; None past the end."""
        header = self.frame_header_at(offset)
        return (offset + HEADER_SIZE + header[0], header[1]) if header is not None else None

    def scan(self, start: int = 0, end: int | None = None, *, skip_damage: bool = False) -> Scan:
        """Frames from start up to a torn tail or EOF; mid-log damage raises CorruptLog (see Scan for skip_damage).

        Once iterated to its end, the returned Scan's `torn_at` is the offset of a torn tail or None.
        """
        return Scan(self, start, end, skip_damage)

    def raw(self, start: int, max_bytes: int) -> bytes:
        """Whole, valid frames from start, byte for byte, at most max_bytes of them (at least one frame if any).

        What a standby copies. Each frame's checksum is checked as it is read (its records are
        not decoded: the receiver does that); a torn tail is never included, and damage where
        the frames start is CorruptLog, as for scan.
        """
        end = self.size()
        data = self._read_span(start, min(end, start + max_bytes)) if start < end else b""
        whole = _whole_frames(data)
        if whole == 0 and data:
            first = self.frame_end_at(start)
            if first is not None and start + len(data) < first[0] <= end:  # one frame bigger than max_bytes
                data = self._read_span(start, first[0])
                whole = _whole_frames(data)
        if whole == 0 and data:
            return self._raw_scanned(start, max_bytes)  # damage raises CorruptLog; a torn tail is nothing
        return data[:whole]

    def _raw_scanned(self, start: int, max_bytes: int) -> bytes:
        chunks: list[bytes] = []
        total = 0
        for frame in self.scan(start):
            if chunks and total + (frame.end - frame.offset) > max_bytes:
                break
            chunks.append(self._read_span(frame.offset, frame.end))
            total += frame.end - frame.offset
            if total >= max_bytes:
                break
        return b"".join(chunks)

    def _read_span(self, start: int, end: int) -> bytes:
        try:
            with open(self.path, "rb") as handle:
                handle.seek(start)
                return handle.read(end - start)
        except OSError as exc:
            raise from_os_error(exc, "reading the log") from None

    def _frames(self, scan: Scan, start: int, end: int | None) -> Iterator[Frame]:
        try:
            handle = open(self.path, "rb")
        except FileNotFoundError:
            self._check_directory()
            return
        except OSError as exc:
            raise from_os_error(exc, "reading the log") from None
        with handle:
            file_size = os.fstat(handle.fileno()).st_size if end is None else end
            offset = start
            handle.seek(offset)
            while offset < file_size:
                header = handle.read(HEADER_SIZE)
                problem = None
                payload = b""
                length = 0
                if len(header) < HEADER_SIZE:
                    problem = "partial header"
                else:
                    length, checksum = HEADER.unpack(header)
                    if length == 0 or length > MAX_FRAME or offset + HEADER_SIZE + length > file_size:
                        problem = "bad length"
                    else:
                        payload = handle.read(length)
                        if len(payload) < length:
                            problem = "partial payload"
                        elif checksum16(payload) != checksum:
                            problem = "checksum mismatch"
                if problem is None:
                    try:
                        records = decode_payload(payload)
                    except CorruptLog:
                        problem = "undecodable payload"
                if problem is not None:
                    last_rotted = None
                    if len(header) == HEADER_SIZE and self._rest_is_payload(handle, offset, file_size, checksum):
                        # The bytes after the header are exactly a payload with this checksum: a complete,
                        # acknowledged record whose length field rotted. Cutting it off would lose it.
                        last_rotted = f"the last log record (offset {offset}) is damaged (its length field)"
                    elif problem in ("checksum mismatch", "undecodable payload") and offset + HEADER_SIZE + len(payload) == file_size \
                            and any(payload):
                        # A whole frame of non-zero bytes that fails its checksum is not a torn
                        # append (that is short, or zeros): the last acknowledged record rotted.
                        last_rotted = f"the last log record (offset {offset}) is damaged ({problem})"
                    if last_rotted is not None:
                        if not scan.skip_damage:
                            raise CorruptLog(last_rotted)
                        scan.damaged.append((offset, file_size, last_rotted))
                        scan.end_damaged = True
                        return
                    try:
                        following = self._next_valid_frame(handle, offset, file_size, problem, offset + HEADER_SIZE + length)
                    except CorruptLog as exc:  # too much after the damage to search: all of it counts as damaged
                        if not scan.skip_damage:
                            raise
                        scan.damaged.append((offset, file_size, str(exc)))
                        scan.end_damaged = True
                        return
                    if following is None:
                        scan.torn_at = self.torn_at = offset
                        return
                    message = (f"log damaged at offset {offset} ({problem}) but a valid record follows at offset {following}:"
                               " the middle of the history is corrupt")  # fmt: skip
                    if not scan.skip_damage:
                        raise CorruptLog(message)
                    scan.damaged.append((offset, following, message))
                    offset = following
                    handle.seek(offset)
                    continue
                frame_end = offset + HEADER_SIZE + len(payload)
                yield make_frame(offset, payload, records, checksum)
                offset = frame_end
        self.torn_at = None

    @staticmethod
    def _rest_is_payload(handle, offset: int, file_size: int, checksum: bytes) -> bool:
        rest = file_size - offset - HEADER_SIZE
        if rest <= 0 or rest > MAX_FRAME:
            return False
        handle.seek(offset + HEADER_SIZE)
        return checksum16(handle.read(rest)) == checksum

    @staticmethod
    def _valid_frame_at(handle, position: int, file_size: int) -> bool:
        handle.seek(position)
        header = handle.read(HEADER_SIZE)
        if len(header) < HEADER_SIZE:
            return False
        length, checksum = HEADER.unpack(header)
        if length == 0 or position + HEADER_SIZE + length > file_size:
            return False
        payload = handle.read(length)
        return plausible_payload_start(payload[0]) and checksum16(payload) == checksum

    def _next_valid_frame(self, handle, offset: int, file_size: int, problem: str, claimed_end: int) -> int | None:
        """Where the first good frame after the damaged one at offset starts, or None (a torn tail)."""
        # A flipped byte in a payload leaves its length right: the next frame is where the header says.
        if offset < claimed_end < file_size and self._valid_frame_at(handle, claimed_end, file_size):
            return claimed_end
        if file_size - offset > MAX_TAIL_SCAN:
            raise CorruptLog(f"log damaged at offset {offset} ({problem}) with {file_size - offset} bytes after it")
        handle.seek(offset)
        rest = handle.read(file_size - offset)
        for position in range(1, len(rest) - HEADER_SIZE):
            length = int.from_bytes(rest[position : position + 4], "big")
            payload_start = position + HEADER_SIZE
            if length == 0 or payload_start + length > len(rest):
                continue
            if not plausible_payload_start(rest[payload_start]):
                continue
            payload = rest[payload_start : payload_start + length]
            if checksum16(payload) == rest[position + 4 : payload_start]:
                return offset + position
        return None

    # ------------------------------------------------------------ writing
    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the writers' lock (flock: released by the kernel if we die)."""
        self._check_directory()
        try:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise from_os_error(exc, "opening the log lock") from None
        try:
            if not _wait_for_lock(fd, self.lock_timeout):
                fd = -1  # the waiting thread owns it now, and lets go of the lock if it ever gets it
                raise Unavailable(
                    f"the store is busy: {describe_lock_holder(self.lock_path)} has held the writers' lock for more than"
                    f" {self.lock_timeout:g} s; gave up (set {LOCK_TIMEOUT_ENV} to wait longer)"
                )
            crash_point("log-locked")
            yield
        finally:
            if fd >= 0:
                os.close(fd)

    def repair_tail(self, torn_at: int) -> None:
        """Cut a torn tail off (only under the lock; torn_at from a scan that found it)."""
        self.truncate(torn_at)

    def truncate(self, offset: int) -> None:
        """Cut the log back to offset (only under the lock, for a torn tail)."""
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.ftruncate(fd, offset)
                fsync_fd(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise from_os_error(exc, "repairing the log tail") from None

    def append(self, payload: bytes, expected_size: int) -> tuple[int, int]:
        """Append one frame with one write() and fsync it; return (offset, end).

        expected_size is where the caller believes the log ends; anything else
        means someone wrote without the lock, which we refuse to build on.
        """
        return self.append_raw(frame_bytes(payload), expected_size)

    def append_raw(self, data: bytes, expected_size: int) -> tuple[int, int]:
        """Append whole frames already encoded (a standby's copy of its primary's, checked by the caller).

        One write() and one fsync for all of them: a crash mid-write leaves whole frames
        and at most one torn frame, which the next writer cuts like any torn tail.
        """
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            self._check_directory()
            raise from_os_error(exc, "opening the log") from None
        try:
            start = os.fstat(fd).st_size
            if start != expected_size:
                raise CorruptLog(f"the log is {start} bytes long, expected {expected_size}: was it written without the lock?")
            try:
                write_all(fd, data)
                crash_point("log-written")
                fsync_fd(fd)
            except OSError as exc:
                # Leave no torn frame behind if we can help it; a later writer cuts it otherwise.
                try:
                    os.ftruncate(fd, start)
                    fsync_fd(fd)
                except OSError:
                    # The frame may be in the log, whole: whether it counts is decided by the next
                    # reader, not here. Never say "failed" for a write that may have happened.
                    raise OutcomeUnknown(
                        f"appending to the log failed ({exc.strerror or exc}) after the record was written, and it could not"
                        " be taken back: the write may have been committed (imstore history KEY shows whether it was)"
                    ) from None
                raise from_os_error(exc, "appending to the log") from None
            crash_point("log-fsynced")
            return start, start + len(data)
        finally:
            os.close(fd)


def _whole_frames(data: bytes) -> int:
    """How many leading bytes of data are whole frames whose checksums match."""
    position = 0
    while position + HEADER_SIZE <= len(data):
        length, checksum = HEADER.unpack_from(data, position)
        payload_end = position + HEADER_SIZE + length
        if length == 0 or length > MAX_FRAME or payload_end > len(data):
            break
        if checksum16(data[position + HEADER_SIZE : payload_end]) != checksum:
            break
        position = payload_end
    return position


def lock_timeout_from_env() -> float:
    """IMSTORE_LOCK_TIMEOUT in seconds (a bad value is the default: a writer must never wait forever)."""
    try:
        value = float(os.environ.get(LOCK_TIMEOUT_ENV, DEFAULT_LOCK_TIMEOUT))
    except ValueError:
        return DEFAULT_LOCK_TIMEOUT
    return value if value >= 0 and value == value and value != float("inf") else DEFAULT_LOCK_TIMEOUT


def _wait_for_lock(fd: int, timeout: float) -> bool:
    """flock(fd) exclusively within timeout seconds; False (and fd handed to a thread) if it did not come.

    Uncontended, one non-blocking call. Contended, a thread blocks in flock (the kernel
    wakes it the moment the lock is free: no polling delay) while we wait with a
    deadline; if we give up, that thread keeps fd and releases the lock when it gets it.
    """
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        pass
    got_it = threading.Event()
    guard = threading.Lock()
    outcome: dict = {"abandoned": False, "error": None}

    def wait() -> None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:
            outcome["error"] = exc
        with guard:
            if outcome["abandoned"]:
                os.close(fd)  # closing releases the lock we got too late
                return
            got_it.set()

    threading.Thread(target=wait, name="imstore-log-lock", daemon=True).start()
    got_it.wait(timeout)
    with guard:
        if not got_it.is_set():
            outcome["abandoned"] = True
            return False
    if outcome["error"] is not None:
        raise from_os_error(outcome["error"], "taking the writers' lock")
    return True


def describe_lock_holder(lock_path: Path) -> str:
    """Who holds the flock on lock_path, from /proc/locks (Linux): 'process 123 (imstore put k), stopped'."""
    try:
        inode = os.stat(lock_path).st_ino
        with open("/proc/locks") as locks:
            lines = locks.read().splitlines()
    except OSError:
        return "another process"
    for line in lines:
        fields = line.split()
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5].rsplit(":", 1)[-1] == str(inode) and fields[4].isdigit():
            pid = int(fields[4])
            return _describe_process(pid)
    return "another process"


def _describe_process(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            command = handle.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
        with open(f"/proc/{pid}/stat") as handle:
            state = handle.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return f"process {pid}"
    stopped = ", which is stopped" if state in ("T", "t") else ""
    return f"process {pid} ({command[:80]}){stopped}"
