"""The values the store hands out, and the one contract local and remote stores share.

`Store` (a directory) and `RemoteStore` (a server) both satisfy `StoreAPI`;
the CLI only calls what is declared there (tests/test_contracts.py checks both).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, NamedTuple, Protocol

import msgpack

from .index import version_row
from .validate import format_time

if TYPE_CHECKING:
    from .records import Record

__all__ = ["Version", "PutResult", "BatchItem", "BatchResult", "VerifyReport", "StoreAPI", "unpack_meta", "version_fields"]


class Version(NamedTuple):
    """One version of a key, as the index knows it. Immutable.

    A NamedTuple: ~0.1 ms to define on every CLI start, where a frozen slotted
    dataclass costs ~0.9 ms plus importing dataclasses (bench/RESULTS.md).
    `stale` is not part of equality.
    """

    key: str
    version: int
    seq: int
    op: str
    hash: str | None
    size: int
    time_ns: int
    content_type: str | None = None
    message: str | None = None
    meta: dict = {}  # never mutated
    # True when this came from the cache while the log could not be read: a newer
    # version may exist (the server sends `X-Imstore-Stale: 1` for it).
    stale: bool = False

    def __eq__(self, other) -> bool:
        return self[:10] == other[:10] if isinstance(other, Version) else NotImplemented

    def __ne__(self, other) -> bool:  # tuple's own __ne__ would compare `stale` too
        return self[:10] != other[:10] if isinstance(other, Version) else NotImplemented

    def __hash__(self) -> int:
        return hash(self[:9])  # meta (a dict) is not hashable

    def as_stale(self) -> Version:
        """The same version, marked as possibly stale."""
        return self._replace(stale=True)

    @property
    def deleted(self) -> bool:
        return self.op == "delete"

    @property
    def time(self) -> str:
        return format_time(self.time_ns)

    @classmethod
    def from_row(cls, row: tuple) -> Version:
        key, version, seq, op, object_hash, size, time_ns, content_type, message, meta = row
        return cls(key, version, seq, op, object_hash, size, time_ns, content_type, message, unpack_meta(meta))

    @classmethod
    def from_record(cls, record: Record) -> Version:
        return cls(record.key, record.version, record.seq, record.op, record.hash, record.size, record.time_ns,
                   record.content_type, record.message, dict(record.meta))  # fmt: skip

    def to_row(self) -> tuple:
        """The index row of this version (the inverse of from_row), as the cache keeps it."""
        return version_row(self)


class PutResult(NamedTuple):
    version: Version
    unchanged: bool


class BatchItem(NamedTuple):
    """One key's new content in an import batch; its object is already stored (or in the batch's pack)."""

    key: str
    hash: str
    size: int
    content_type: str | None = None
    meta: dict = {}  # never mutated
    message: str | None = None


class BatchResult(NamedTuple):
    """What one committed batch did: the versions it added and how many items were unchanged."""

    records: tuple[Record, ...]
    unchanged: int
    unchanged_bytes: int = 0
    position: tuple[int, str] | None = None  # the log position at which every item was its key's latest

    @property
    def added(self) -> tuple[Version, ...]:
        """The versions the batch added (built on demand: a batch may hold many thousands)."""
        return tuple(Version.from_record(record) for record in self.records)


class VerifyReport:
    """What verify found. problems make it fail; warnings and notes do not."""

    def __init__(self, problems: list[str] | None = None, warnings: list[str] | None = None, notes: list[str] | None = None,
                 records: int = 0, keys: int = 0, objects: int = 0, bytes: int = 0):  # noqa: A002
        self.problems: list[str] = problems if problems is not None else []
        self.warnings: list[str] = warnings if warnings is not None else []
        self.notes: list[str] = notes if notes is not None else []
        self.records = records
        self.keys = keys
        self.objects = objects
        self.bytes = bytes

    def __repr__(self) -> str:
        return f"VerifyReport(ok={self.ok}, problems={self.problems!r}, records={self.records}, objects={self.objects})"

    @property
    def ok(self) -> bool:
        return not self.problems


def version_fields(version: Version) -> dict:
    """Everything about one version as JSON-ready fields: the one layout the CLI's --json and the
    server's wire documents share (the server adds time_ns)."""
    return {
        "key": version.key,
        "version": version.version,
        "seq": version.seq,
        "op": version.op,
        "hash": version.hash,
        "size": version.size,
        "time": version.time,
        "content_type": version.content_type,
        "message": version.message,
        "meta": version.meta,
    }


def unpack_meta(blob: bytes | None) -> dict:
    """The metadata dict of an index row (stored as msgpack, NULL for none)."""
    return msgpack.unpackb(blob, raw=False) if blob else {}


class Reader(Protocol):
    """A verified reader of one object's bytes (local, cached or remote)."""

    object_id: str
    size: int

    def read(self) -> bytes: ...

    def chunks(self, chunk_size: int = ...) -> Iterator[bytes]: ...

    def verify(self) -> None: ...


class StoreAPI(Protocol):
    """What the CLI may call on a store, local (`Store`) or remote (`RemoteStore`).

    Anything a command needs beyond this has no remote form and must say so.
    """

    warnings: list[str]

    def notes(self) -> list[str]: ...

    def put_stream(self, key: str, source, *, content_type: str | None = None, meta: dict | None = None,
                   message: str | None = None, if_version: int | None = None, if_absent: bool = False,
                   max_size: int | None = None) -> PutResult: ...  # fmt: skip

    def delete(self, key: str, *, message: str | None = None, if_version: int | None = None) -> Version: ...

    def open_version(self, key: str, version: int | str | None = None, at: int | None = None) -> tuple[Version, Reader]: ...

    def open_object(self, hash_or_prefix: str) -> Reader: ...

    def history(self, key: str, limit: int | None = None) -> list[Version]: ...

    def ls(self, prefix: str = "", *, include_deleted: bool = False, limit: int | None = None) -> list[Version]: ...

    def log_records(self, after: int = 0, limit: int | None = None) -> list[Version]: ...

    def verify(self, progress: Callable[[int, int], None] | None = None) -> VerifyReport: ...

    def reindex(self) -> int: ...

    def verifier_key(self) -> str: ...

    def checkpoint(self) -> str: ...

    def prove(self, key: str, version: int | str | None = None, at: int | None = None) -> dict: ...

    def prove_since(self, old_checkpoint: str) -> dict: ...

    def close(self) -> None: ...
