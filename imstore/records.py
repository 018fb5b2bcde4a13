"""The log's format, as pure code with no files: records, frames and the hash chain.

Frame: u32 big-endian payload length | 16-byte BLAKE3 of payload | payload.
A payload is one record (a msgpack map) or a batch (a msgpack array of record
payloads as bin), so a batch is committed by one write() and is all or nothing.
Each record carries `prev`, the 32-byte BLAKE3 of the previous record's payload:
the chain makes history tamper-evident; the frame checksum finds a torn tail.

`Chain` is the only code that numbers and links records (seq and prev): a put,
a delete, an import batch and a standby checking shipped frames all go through it.
"""

from __future__ import annotations

import struct
import time
from typing import NamedTuple

import msgpack

from .errors import CorruptLog, InvalidInput
from .hashing import blake3, checksum16

__all__ = [
    "HEADER", "HEADER_SIZE", "MAX_FRAME", "GENESIS", "Record", "Frame", "Chain",
    "encode_record", "decode_payload", "decode_record", "frame_bytes", "batch_payload", "check_chain",
    "make_frame", "payload_spans", "EPOCH_OP", "EPOCH_FIELDS", "epoch_meta",
]  # fmt: skip

HEADER = struct.Struct(">I16s")
HEADER_SIZE = HEADER.size
MAX_FRAME = 256 << 20
GENESIS = b"\x00" * 32
EPOCH_OP = "epoch"  # a promotion (R7): key "", version = the new epoch, no object, alone in its frame
EPOCH_FIELDS = frozenset({"fork_seq", "fork_hash", "node"})

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

    @property
    def is_epoch(self) -> bool:
        return self.op == EPOCH_OP


class Frame(NamedTuple):
    """A decoded frame: its place in the log and the records it commits.

    spans: each record's payload as (offset in the log, length), so a reader can
    check one record against the index without reading the whole frame.
    """

    offset: int
    end: int
    checksum: bytes
    records: tuple[Record, ...]
    spans: tuple[tuple[int, int], ...] = ()


def make_frame(offset: int, payload: bytes, records: tuple[Record, ...], checksum: bytes | None = None) -> Frame:
    """The Frame of payload written at offset (records already decoded or built from the same fields)."""
    start = offset + HEADER_SIZE
    spans = tuple((start + inner, length) for inner, length in payload_spans(payload))
    return Frame(offset, start + len(payload), checksum if checksum is not None else checksum16(payload), records, spans)


def payload_spans(payload: bytes) -> list[tuple[int, int]]:
    """(offset in payload, length) of each record's bytes: the whole payload, or each bin item of a batch.

    Walks only msgpack's framing (array and bin headers), never the records.
    """
    first = payload[0]
    if 0x90 <= first <= 0x9F:
        count, position = first & 0x0F, 1
    elif first == 0xDC:
        count, position = int.from_bytes(payload[1:3], "big"), 3
    elif first == 0xDD:
        count, position = int.from_bytes(payload[1:5], "big"), 5
    else:
        return [(0, len(payload))]
    spans = []
    for _ in range(count):
        marker = payload[position]
        width = {0xC4: 1, 0xC5: 2, 0xC6: 4}.get(marker)
        if width is None:
            raise CorruptLog("log batch holds something other than records")
        length = int.from_bytes(payload[position + 1 : position + 1 + width], "big")
        position += 1 + width
        spans.append((position, length))
        position += length
    return spans


def decode_record(payload: bytes) -> Record:
    """One record's payload (a msgpack map), decoded and checked."""
    return _record_from_payload(payload)


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
    """The whole frame (header and payload) as it is written to the log."""
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
        record.op in ("put", "delete", EPOCH_OP)
        and isinstance(record.key, str)
        and isinstance(record.prev, bytes)
        and len(record.prev) == 32
        and isinstance(record.meta, dict)
        and (record.hash is None or len(record.hash) == 64)
        and (record.op != "put" or record.hash is not None)
    )
    if not valid:
        raise CorruptLog("log record has fields of the wrong type")
    if record.op == EPOCH_OP and not _valid_epoch(record):
        raise CorruptLog("log epoch record is not in the shape of one (key '', no object, fork_seq, fork_hash, node)")
    return record


def _valid_epoch(record: Record) -> bool:
    meta = record.meta
    return (
        record.key == "" and record.hash is None and record.size == 0 and record.version >= 1
        and set(meta) == EPOCH_FIELDS and all(isinstance(value, str) for value in meta.values())
        and meta["fork_seq"].isdigit() and int(meta["fork_seq"]) == record.seq - 1
        and len(meta["fork_hash"]) == 64 and meta["fork_hash"] == record.prev.hex()
    )  # fmt: skip


def epoch_meta(fork_seq: int, fork_hash: bytes, node: str) -> dict:
    """The meta of an epoch record: the head it forks from (the record before it) and the promoted node."""
    return {"fork_seq": str(fork_seq), "fork_hash": fork_hash.hex(), "node": node}


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
        records = tuple(_record_from_payload(item) for item in items)
        if any(record.is_epoch for record in records):
            raise CorruptLog("log batch holds an epoch record (an epoch record stands alone in its frame)")
        return records
    raise CorruptLog("log frame is neither a record nor a batch")


def plausible_payload_start(byte: int) -> bool:
    """Could a payload start with this byte (a msgpack map or array)?"""
    return 0x80 <= byte <= 0x9F or byte in (0xDC, 0xDD, 0xDE, 0xDF)


def check_chain(frame: Frame, prev: bytes, seq: int) -> tuple[bytes, int]:
    """Each record must follow the one before: seq + 1 and prev = its hash. Returns the new (prev, seq)."""
    for record in frame.records:
        if record.seq != seq + 1 or record.prev != prev:
            raise CorruptLog(
                f"the log's hash chain is broken at offset {frame.offset} (record seq {record.seq}, expected {seq + 1}):"
                " history was altered or the middle of the log is corrupt"
            )
        prev, seq = record.record_hash, record.seq
    return prev, seq


# A batch's array header and each item's bin header, with room to spare: what a frame may hold in payloads.
_FRAME_BUDGET = MAX_FRAME - 64
_PER_RECORD_OVERHEAD = 8


class Chain:
    """Numbers and links new records after a log position: the only code that sets seq and prev.

    Records are added in order; `payload()` is what one frame carries (one record
    or a batch), and `records` are the decoded records of that payload, built from
    the fields given rather than by decoding (a large import would spend a third
    of its commit decoding what it just encoded).
    """

    def __init__(self, seq: int, prev: bytes):
        self.seq = seq
        self.prev = prev
        self.payloads: list[bytes] = []
        self.records: list[Record] = []
        self._bytes = 0

    def add(
        self,
        *,
        op: str,
        key: str,
        version: int,
        hash: str | None,
        size: int,  # noqa: A002
        content_type: str | None = None,
        meta: dict | None = None,
        message: str | None = None,
    ) -> Record:
        """The next record: seq + 1, linked to the one before, timed now."""
        meta = meta or {}
        now = time.time_ns()
        payload = encode_record(seq=self.seq + 1, time_ns=now, op=op, key=key, version=version, hash=hash, size=size,
                                content_type=content_type, meta=meta, message=message, prev=self.prev)  # fmt: skip
        record_hash = blake3(payload).digest()
        record = Record(self.seq + 1, now, op, key, version, hash, size, content_type, meta, message, self.prev, record_hash)
        self.seq, self.prev = record.seq, record_hash
        self.payloads.append(payload)
        self.records.append(record)
        self._bytes += len(payload) + _PER_RECORD_OVERHEAD
        return record

    def __len__(self) -> int:
        return len(self.payloads)

    def payload(self) -> bytes:
        """The frame payload of the records added: one record as itself, several as a batch."""
        if not self.payloads:
            raise ValueError("an empty chain has no payload")
        if self._bytes > _FRAME_BUDGET:
            raise InvalidInput(f"a batch of {len(self.payloads)} records is too large for one log frame; import it in parts")
        return self.payloads[0] if len(self.payloads) == 1 else batch_payload(self.payloads)
