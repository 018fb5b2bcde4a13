"""The append-only, hash-chained ref log: the one source of truth.

Frame: u32 big-endian payload length | 16-byte BLAKE3 of payload | payload.
A payload is one record (a msgpack map) or a batch (a msgpack array of record
payloads as bin), so a batch is committed by one write() and is all or nothing.
Each record carries `prev`, the 32-byte BLAKE3 of the previous record's payload:
the chain makes history tamper-evident; the frame checksum finds a torn tail.

A damaged *last* frame is a torn tail (a crash mid-append): readers stop before
it quietly, a writer holding the lock cuts it off and says so. A damaged frame
followed by a good one is mid-log corruption: a hard error, never skipped.
"""

from __future__ import annotations

import fcntl
import os
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import msgpack

from .errors import CorruptLog, Unavailable, from_os_error
from .fsio import crash_point, fsync_fd, write_all
from .hashing import blake3, checksum16

__all__ = ["Record", "Frame", "Log", "GENESIS", "encode_record", "decode_payload", "frame_bytes"]

HEADER = struct.Struct(">I16s")
HEADER_SIZE = HEADER.size
MAX_FRAME = 256 << 20
GENESIS = b"\x00" * 32
SEGMENT_NAME = "00000000000000000000.log"
# How far past a damaged frame we look for a good one before calling it a torn tail.
MAX_TAIL_SCAN = 256 << 20

_UNPACK_LIMITS = dict(
    raw=False,
    strict_map_key=True,
    max_str_len=1 << 20,
    max_bin_len=MAX_FRAME,
    max_array_len=10_000_000,
    max_map_len=1 << 16,
    max_ext_len=0,
)


class Record(NamedTuple):
    """One entry of the log: a put or a delete of one key (a NamedTuple: cheaper to define at start-up)."""

    seq: int
    time_ns: int
    op: str
    key: str
    version: int
    hash: str | None
    size: int
    content_type: str | None
    meta: dict = {}  # never mutated
    message: str | None = None
    prev: bytes = GENESIS
    record_hash: bytes = b""

    @property
    def deleted(self) -> bool:
        return self.op == "delete"


class Frame(NamedTuple):
    """A decoded frame: its place in the log and the records it commits.

    (A NamedTuple rather than a frozen dataclass: cheaper to define at start-up.)
    """

    offset: int
    end: int
    checksum: bytes
    records: tuple[Record, ...]


def encode_record(
    *,
    seq: int,
    time_ns: int,
    op: str,
    key: str,
    version: int,
    hash: str | None,
    size: int,
    content_type: str | None,
    meta: dict,
    message: str | None,
    prev: bytes,
) -> bytes:
    """The record's payload bytes (hashed as-is for the chain)."""
    return msgpack.packb(
        {
            "seq": seq,
            "time_ns": time_ns,
            "op": op,
            "key": key,
            "version": version,
            "hash": bytes.fromhex(hash) if hash else None,
            "size": size,
            "content_type": content_type,
            "meta": meta or {},
            "message": message,
            "prev": prev,
        },
        use_bin_type=True,
    )


def frame_bytes(payload: bytes) -> bytes:
    return HEADER.pack(len(payload), checksum16(payload)) + payload


def batch_payload(record_payloads: list[bytes]) -> bytes:
    return msgpack.packb(record_payloads, use_bin_type=True)


def _record_from_payload(payload: bytes) -> Record:
    try:
        fields = msgpack.unpackb(payload, **_UNPACK_LIMITS)
        object_hash = fields["hash"]
        record = Record(
            seq=_int(fields["seq"]),
            time_ns=_int(fields["time_ns"]),
            op=fields["op"],
            key=fields["key"],
            version=_int(fields["version"]),
            hash=object_hash.hex() if object_hash is not None else None,
            size=_int(fields["size"]),
            content_type=fields.get("content_type"),
            meta=fields.get("meta") or {},
            message=fields.get("message"),
            prev=fields["prev"],
            record_hash=blake3(payload).digest(),
        )
    except CorruptLog:
        raise
    except Exception as exc:  # msgpack raises many types for hostile bytes
        raise CorruptLog(f"undecodable log record: {type(exc).__name__}") from None
    valid = (
        record.op in ("put", "delete")
        and isinstance(record.key, str)
        and isinstance(record.prev, bytes)
        and len(record.prev) == 32
        and isinstance(record.meta, dict)
        and (record.hash is None or len(record.hash) == 64)
        and (record.op == "delete" or record.hash is not None)
    )
    if not valid:
        raise CorruptLog("log record has fields of the wrong type")
    return record


def _int(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise CorruptLog("log record has a non-integer number field")
    return value


def decode_payload(payload: bytes) -> tuple[Record, ...]:
    """Records of one frame payload (a map is one record, an array a batch)."""
    if not payload:
        raise CorruptLog("empty log frame")
    first = payload[0]
    if 0x80 <= first <= 0x8F or first in (0xDE, 0xDF):
        return (_record_from_payload(payload),)
    if 0x90 <= first <= 0x9F or first in (0xDC, 0xDD):
        try:
            items = msgpack.unpackb(payload, **_UNPACK_LIMITS)
        except Exception as exc:
            raise CorruptLog(f"undecodable log batch: {type(exc).__name__}") from None
        if not items or not all(isinstance(item, bytes) for item in items):
            raise CorruptLog("log batch holds something other than records")
        return tuple(_record_from_payload(item) for item in items)
    raise CorruptLog("log frame is neither a record nor a batch")


def _plausible_payload_start(byte: int) -> bool:
    return 0x80 <= byte <= 0x9F or byte in (0xDC, 0xDD, 0xDE, 0xDF)


class Log:
    """The log directory: one segment file and the writers' lock."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.path = self.directory / SEGMENT_NAME
        self.lock_path = self.directory / "LOCK"

    def _check_directory(self) -> None:
        try:
            is_directory = self.directory.is_dir()
        except OSError as exc:  # is_dir() only hides "missing"; EIO and the like come through
            raise from_os_error(exc, f"checking the store's log directory {self.directory}") from None
        if not is_directory:
            raise Unavailable(f"the store's log directory is missing or not a directory: {self.directory}")

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
        return Frame(offset, offset + HEADER_SIZE + length, checksum, decode_payload(payload))

    def scan(self, start: int = 0, end: int | None = None) -> Iterator[Frame]:
        """Frames from start up to a torn tail or EOF; mid-log damage raises CorruptLog.

        After the iteration, `self.torn_at` is the offset of a torn tail or None.
        """
        self.torn_at: int | None = None
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
                    if len(header) == HEADER_SIZE and self._rest_is_payload(handle, offset, file_size, checksum):
                        # The bytes after the header are exactly a payload with this checksum: a complete,
                        # acknowledged record whose length field rotted. Cutting it off would lose it.
                        raise CorruptLog(f"the last log record (offset {offset}) is damaged (its length field)")
                    whole_frame = offset + HEADER_SIZE + len(payload) == file_size
                    if problem in ("checksum mismatch", "undecodable payload") and whole_frame and any(payload):
                        # A whole frame of non-zero bytes that fails its checksum is not a torn
                        # append (that is short, or zeros): the last acknowledged record rotted.
                        raise CorruptLog(f"the last log record (offset {offset}) is damaged ({problem})")
                    self._classify_damage(handle, offset, file_size, problem)
                    self.torn_at = offset
                    return
                frame_end = offset + HEADER_SIZE + len(payload)
                yield Frame(offset, frame_end, checksum, records)
                offset = frame_end

    @staticmethod
    def _rest_is_payload(handle, offset: int, file_size: int, checksum: bytes) -> bool:
        rest = file_size - offset - HEADER_SIZE
        if rest <= 0 or rest > MAX_FRAME:
            return False
        handle.seek(offset + HEADER_SIZE)
        return checksum16(handle.read(rest)) == checksum

    def _classify_damage(self, handle, offset: int, file_size: int, problem: str) -> None:
        """Raise CorruptLog if any good frame follows the damaged one at offset."""
        if file_size - offset > MAX_TAIL_SCAN:
            raise CorruptLog(f"log damaged at offset {offset} ({problem}) with {file_size - offset} bytes after it")
        handle.seek(offset)
        rest = handle.read(file_size - offset)
        for position in range(1, len(rest) - HEADER_SIZE):
            length = int.from_bytes(rest[position : position + 4], "big")
            payload_start = position + HEADER_SIZE
            if length == 0 or payload_start + length > len(rest):
                continue
            if not _plausible_payload_start(rest[payload_start]):
                continue
            payload = rest[payload_start : payload_start + length]
            if checksum16(payload) == rest[position + 4 : payload_start]:
                raise CorruptLog(
                    f"log damaged at offset {offset} ({problem}) but a valid record follows at offset {offset + position}:"
                    " the middle of the history is corrupt"
                )

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
            fcntl.flock(fd, fcntl.LOCK_EX)
            crash_point("log-locked")
            yield
        finally:
            os.close(fd)

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
        data = frame_bytes(payload)
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
                    pass
                raise from_os_error(exc, "appending to the log") from None
            crash_point("log-fsynced")
            return start, start + len(data)
        finally:
            os.close(fd)
