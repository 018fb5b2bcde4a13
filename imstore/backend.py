"""The boundary between the store and where its bytes live: object and log backends.

Each operation's contract is written beside it (restic's `backend.Backend` is
the model). The local implementations are `objects.ObjectStore` and `log.Log`;
tests/test_contracts.py checks that they keep these signatures and
runs one behaviour suite against them, as any later backend (a bucket) must pass.

The one rule every backend keeps: whatever is written is written once and
never modified; a write is durable when it returns. The log is the one thing
that grows, by whole frames, through a compare-and-append (a bucket can do that
as a conditional create: the frame named by its start offset, If-None-Match: *).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Protocol

from .fsio import CHUNK_SIZE

if TYPE_CHECKING:
    from .errors import ImstoreError
    from .objects import ObjectLocation
    from .packs import PackWriter
    from .records import Frame, Record

__all__ = ["ObjectReader", "ObjectBackend", "LogBackend", "Scan"]


class ObjectReader(Protocol):
    """One object's bytes, checked against its id before they are trusted."""

    object_id: str
    size: int

    def read(self) -> bytes:
        """All the bytes, verified before anything is returned (CorruptObject otherwise)."""
        ...

    def chunks(self, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
        """The bytes in order, hashed as they go: CorruptObject after the last chunk on a mismatch,
        so a caller commits its output (rename, last byte) only once the iteration ends."""
        ...

    def verify(self) -> None:
        """A full pass over the bytes: CorruptObject on a mismatch."""
        ...

    def local_file(self) -> ObjectLocation | None:
        """(path, offset, length) of the bytes in a local file, for sendfile and ranges; None when not a file."""
        ...


class ObjectBackend(Protocol):
    """Content-addressed objects: an id is the BLAKE3-256 of the bytes, and names them forever."""

    def open(self, object_id: str) -> ObjectReader:
        """A reader of the object; ObjectNotFound if it is not stored, Unavailable if the backend cannot be read."""
        ...

    def exists(self, object_id: str) -> bool:
        """Is the object stored (loose or packed)? InvalidHash for a malformed id (never a path)."""
        ...

    def resolve_prefix(self, prefix: str) -> str:
        """The full id for 8 to 64 hex digits: ObjectNotFound for none, AmbiguousPrefix for several."""
        ...

    def write_stream(self, chunks: Iterable[bytes], max_size: int | None = None) -> tuple[str, int]:
        """Store the bytes; (object_id, size), durable on return (object and its name).
        An existing object is not rewritten (a dedup hit). InvalidInput past max_size, with nothing left behind."""
        ...

    def add_stream(self, chunks: Iterable[bytes], max_size: int | None = None) -> tuple[str, int, bool]:
        """write_stream that also says whether this call created the object (False: a dedup hit)."""
        ...

    def write_many(self, blobs: list[bytes]) -> list[tuple[str, int] | ImstoreError]:
        """Several objects from memory, each durable on return unless its entry is the error that stopped it."""
        ...

    def new_pack(self) -> PackWriter:
        """A pack for many objects: add(), `in`, finish() (durable, then visible, all at once), abort()."""
        ...

    def refresh(self) -> None:
        """See objects other processes added since this backend last looked."""
        ...

    def iter_ids(self) -> Iterator[str]:
        """Every stored object id (for verify)."""
        ...

    def check(self) -> tuple[list[str], list[str]]:
        """(problems, notes) for verify beyond each object's hash: damaged packs, orphan packs, temp files."""
        ...

    def remove_stale_temps(self, max_age: float = ...) -> int:
        """Remove what interrupted writes left, older than max_age (under the writers' lock); how many."""
        ...


class Scan(Protocol):
    """One pass over a log's frames; torn_at is set once the pass has ended."""

    torn_at: int | None
    damaged: list[tuple[int, int, str]]  # (offset, end, message) of each damaged stretch stepped over
    end_damaged: bool  # the last stretch runs to the end of the log: its last record rotted

    def __iter__(self) -> Iterator[Frame]: ...


class LogBackend(Protocol):
    """The append-only log: whole frames, one after the other, each durable on return."""

    def end(self) -> int:
        """Where the next frame goes (the log's length, torn bytes included)."""
        ...

    def locked(self) -> AbstractContextManager[None]:
        """The single-writer section (flock today): appends and tail repairs happen only inside it.
        Released if the holder dies."""
        ...

    def append(self, payload: bytes, expected_size: int) -> tuple[int, int]:
        """Compare-and-append one frame holding payload: CorruptLog unless the log ends at expected_size;
        (offset, end), durable on return. A failed append leaves no frame (or a torn tail a writer cuts)."""
        ...

    def append_raw(self, data: bytes, expected_size: int) -> tuple[int, int]:
        """Compare-and-append whole frames already encoded (a standby's copy of its upstream's, checked by
        the caller): as append, all of them durable on return; a cut-short write leaves whole frames and a torn tail."""
        ...

    def scan(self, start: int = 0, end: int | None = None, *, skip_damage: bool = False) -> Scan:
        """Frames from start up to EOF or a torn tail (Scan.torn_at); CorruptLog for damage anywhere else,
        or with skip_damage, damaged frames stepped over and listed in Scan.damaged."""
        ...

    def frame_end_at(self, offset: int) -> tuple[int, bytes] | None:
        """(end, checksum) of the frame at offset from its header alone; None if there is no whole header."""
        ...

    def read_frame_at(self, offset: int) -> Frame | None:
        """The frame at offset, decoded; None if it is not complete and valid."""
        ...

    def read_record(self, offset: int, length: int) -> Record:
        """The one record whose payload is at (offset, length) (from Frame.spans); CorruptLog if it is not one."""
        ...

    def check_frames(self, start: int, max_frames: int, end: int) -> tuple[int, int | None]:
        """Checksums of up to max_frames frames from start: (where it stopped, first damaged offset or None)."""
        ...

    def raw(self, start: int, max_bytes: int) -> bytes:
        """Whole valid frames from start, byte for byte (at least one if any): what a standby copies."""
        ...

    def repair_tail(self, torn_at: int) -> None:
        """Cut a torn tail found by a scan (inside locked()); a bucket log has nothing to cut."""
        ...
