"""The one write path: checks, the decision under the log lock, and the append.

Every put, delete and import batch ends in `Committer._append`, the only caller
of `log.append`: a fencing check for replication goes there and nowhere else.
The write order is the store's promise: an object (and its directory) is
durable before the record that names it; the record is fsynced before the
write is acknowledged; the index is updated last and may lag (it catches up).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from .errors import ImstoreError, InvalidInput, KeyDeleted, KeyNotFound, PreconditionFailed, Unavailable
from .index import Index
from .indexer import Indexer
from .log import Log
from .model import BatchItem, BatchResult, PutResult, Version, unpack_meta
from .objects import ObjectStore
from .packs import PackWriter
from .records import EPOCH_OP, Chain, Frame, epoch_meta, make_frame
from .validate import parse_version, validate_content_type, validate_key, validate_message, validate_meta

if TYPE_CHECKING:
    from .groupcommit import PendingPut

__all__ = ["Committer", "PUT_OPTIONS"]

PUT_OPTIONS = frozenset({"content_type", "meta", "message", "if_version", "if_absent", "max_size"})  # put_stream's keywords


class Committer:
    """Writes new versions into one store's log (objects first, then one frame per commit)."""

    def __init__(self, log: Log, objects: ObjectStore, indexer: Indexer, writable: Callable[[], None]):
        self.log = log
        self.objects = objects
        self.indexer = indexer
        self.writable = writable  # raises Unavailable when the store cannot take a write
        self._temps_checked = False

    # ------------------------------------------------------------ the lock and the append
    @contextmanager
    def writing(self) -> Iterator[Index]:
        """Hold the log lock with the index caught up: the tail state is current."""
        index = self.indexer.index
        with self.log.locked():
            self.indexer.catch_up(writer=True)
            note = self.indexer.damage_note()
            if note is not None and note not in self.indexer.warnings:
                self.indexer.warnings.append(note)  # every write says so until the damage is dealt with
            if not self._temps_checked:
                self.objects.remove_stale_temps()
                self._temps_checked = True
            yield index

    @staticmethod
    def chain(index: Index) -> Chain:
        """A chain continuing the log's last record (under the lock)."""
        state = index.state()
        return Chain(state.seq, state.last_hash)

    def _append(self, chain: Chain | None = None, *, shipped: bytes | None = None, promotion: bool = False,
                shipped_frames: list[Frame] | None = None, staged: bool = False) -> Frame | None:  # fmt: skip
        """The only appender, and so the fencing check: a local write needs the role `primary`. Caller holds the lock.

        chain: new records, appended as one frame and applied to the index (the frame returned).
        shipped: whole frames of an upstream log, byte for byte, already checked by the caller
        against this log's tail (replica.check_frames, whose decoded frames are shipped_frames,
        staged: already applied to the index in its open transaction) and whose objects are durable.
        """
        # (staged: the open transaction already says where the frames end; they start where the log ends now)
        expected = shipped_frames[0].offset if staged and shipped_frames else self.indexer.index.state().log_end
        if shipped is None and not promotion:
            from .failover import require_primary  # here: failover is not loaded by reads

            require_primary(self.log.directory.parent)
        if shipped is not None:
            self.log.append_raw(shipped, expected)
            if shipped_frames is not None:
                self.indexer.applied_shipped(shipped_frames, staged)
            else:
                self.indexer.catch_up()
            return None
        assert chain is not None
        payload = chain.payload()
        offset, end = self.log.append(payload, expected)
        frame = make_frame(offset, payload, tuple(chain.records))
        self.indexer.applied(frame, payload=payload)
        return frame

    def append_shipped(self, data: bytes, head: tuple[int, int, bytes], frames: list[Frame] | None = None,
                       objects: Callable[[], object] | None = None) -> None:  # fmt: skip
        """Append an upstream's frames (checked against head = (log end, seq, chain hash)) under the lock.

        The head is checked again under the lock: a store that changed meanwhile (a local write,
        another pull) is not appended to, since the frames were checked against the old tail.
        frames: their decoded form (replica.check_frames), applied to the index as they are.
        objects: makes the objects they name durable; called under the lock once the frames' index
        rows are staged (uncommitted until the log holds them), so a clone builds its index while
        its objects arrive. Objects first, then the frames: the write order is the same.
        """
        self.writable()
        with self.writing() as index:
            state = index.state()
            if (state.log_end, state.seq, state.last_hash) != head:
                raise Unavailable("the store changed while frames were being pulled (another pull or a local write); pull again")
            staged = objects is not None and frames is not None and self.indexer.stage_shipped(frames, data)
            try:
                if objects is not None:
                    objects()
                self._append(shipped=data, shipped_frames=frames, staged=staged)
            except BaseException:
                if staged:
                    self.indexer.unstage()
                raise

    def promote(self, node: str) -> Frame:
        """Append an epoch record (epoch + 1, forking from the head), alone in its frame (R7, R9)."""
        self.writable()
        with self.writing() as index:
            state = index.state()
            chain = self.chain(index)
            chain.add(op=EPOCH_OP, key="", version=index.epoch() + 1, hash=None, size=0,
                      meta=epoch_meta(state.seq, state.last_hash, node))  # fmt: skip
            frame = self._append(chain, promotion=True)
        assert frame is not None
        return frame

    # ------------------------------------------------------------ puts
    def check_put(self, key: str, content_type: str | None, meta: dict | None, message: str | None, if_version, if_absent: bool):
        """Everything a put can be refused for before its content is read: (meta, if_version), checked."""
        validate_key(key)
        meta = validate_meta(meta)
        if_version = expected_version(if_version)
        validate_content_type(content_type)
        validate_message(message)
        self.writable()
        if if_version is not None or if_absent:
            # Fail fast, before storing the content: a refused put then writes no object at all.
            # The check under the lock (decide, in pending_put) is the one that counts.
            index = self.indexer.current()
            check_preconditions(key, index.latest_version(key), if_version, if_absent)
        return meta, if_version

    def put_stream(self, key: str, chunks: Iterable[bytes], *, content_type: str | None = None, meta: dict | None = None,
                   message: str | None = None, if_version: int | str | None = None, if_absent: bool = False,
                   max_size: int | None = None) -> PutResult:  # fmt: skip
        """Stream chunks into an object, then commit its record (shared with concurrent puts of this process)."""
        meta, if_version = self.check_put(key, content_type, meta, message, if_version, if_absent)
        object_id, size = self.objects.write_stream(chunks, max_size=max_size)
        return self._commit_one(pending_put(key, object_id, size, content_type, meta, message, if_version, if_absent))

    def put_object(self, key: str, object_id: str, *, content_type: str | None = None, meta: dict | None = None,
                   message: str | None = None, if_version: int | str | None = None, if_absent: bool = False) -> PutResult:  # fmt: skip
        """Commit a new version of key naming an object already stored (ObjectNotFound if it is not)."""
        meta, if_version = self.check_put(key, content_type, meta, message, if_version, if_absent)
        size = self.objects.open(object_id).size
        return self._commit_one(pending_put(key, object_id, size, content_type, meta, message, if_version, if_absent))

    def _commit_one(self, pending: PendingPut) -> PutResult:
        self.group_commit([pending])
        return pending.outcome()

    def put_many(self, puts: list[tuple[str, bytes, dict]]) -> list[PutResult | Exception]:
        """Independent puts of in-memory content committed together; each answer stands alone (see Store.put_many)."""
        answers: list = [None] * len(puts)
        checked: list[tuple[int, bytes, tuple]] = []  # (position, data, the fields of its record but the object's)
        for position, (key, data, options) in enumerate(puts):
            unknown = set(options) - PUT_OPTIONS
            if unknown:
                raise TypeError(f"put_many: unknown option(s) {sorted(unknown)}")
            content_type, if_absent, max_size = options.get("content_type"), options.get("if_absent", False), options.get("max_size")
            message = options.get("message")
            try:
                if max_size is not None and len(data) > max_size:
                    raise InvalidInput(f"content is larger than the limit of {max_size} bytes")
                meta, if_version = self.check_put(key, content_type, options.get("meta"), message, options.get("if_version"), if_absent)
            except ImstoreError as exc:
                answers[position] = exc
                continue
            checked.append((position, data, (key, content_type, meta, message, if_version, if_absent)))
        stored = self.objects.write_many([data for _position, data, _fields in checked])
        pending: dict[int, PendingPut] = {}
        for (position, _data, (key, *fields)), written in zip(checked, stored, strict=True):
            if isinstance(written, ImstoreError):
                answers[position] = written
            else:
                pending[position] = pending_put(key, *written, *fields)
        self.group_commit(list(pending.values()))
        for position, waiting in pending.items():
            try:
                answers[position] = waiting.outcome()
            except Exception as exc:  # noqa: BLE001 -- even a bug fails only the puts of its frame: the rest committed
                answers[position] = exc
        return answers

    def group_commit(self, pending: list[PendingPut]) -> None:
        """Concurrent puts in this process share one append and one fsync (see groupcommit.py)."""
        if pending:
            from .groupcommit import GroupCommit  # here: a read never loads groupcommit (its dataclass costs start-up time)

            GroupCommit.for_log(str(self.log.path)).submit(pending, self._commit_puts)

    def _commit_puts(self, batch: list[PendingPut]) -> None:
        """Decide each queued put in order and append the new records as one frame (the caller leads)."""
        with self.writing() as index:
            chain = self.chain(index)
            owners = []
            for pending in batch:
                try:
                    decision = pending.decide(index)
                except ImstoreError as exc:
                    pending.error = exc
                    continue
                if isinstance(decision, PutResult):
                    pending.result = decision
                    continue
                key, latest, object_id, size, content_type, meta, message = decision
                chain.add(op="put", key=key, version=next_version(latest), hash=object_id, size=size,
                          content_type=content_type, meta=meta, message=message)  # fmt: skip
                owners.append(pending)
            if owners:
                frame = self._append(chain)
                for pending, record in zip(owners, frame.records, strict=True):
                    pending.result = PutResult(Version.from_record(record), unchanged=False)

    # ------------------------------------------------------------ deletes
    def delete(self, key: str, *, message: str | None = None, if_version: int | str | None = None) -> Version:
        """Append a tombstone version for key. Deleting a missing or deleted key is NotFound."""
        validate_key(key)
        validate_message(message)
        if_version = expected_version(if_version)
        self.writable()
        with self.writing() as index:
            latest = index.latest_version(key)
            if latest is None:
                raise KeyNotFound(f"no key {key!r}")
            if latest[1] == "delete":
                raise KeyDeleted(f"key {key!r} is already deleted (version {latest[0]})")
            check_preconditions(key, latest, if_version, False)
            chain = self.chain(index)
            chain.add(op="delete", key=key, version=next_version(latest), hash=None, size=0, message=message)
            frame = self._append(chain)
        return Version.from_record(frame.records[0])

    # ------------------------------------------------------------ import batches
    def import_batch(self, items: list[BatchItem], *, pack: PackWriter | None = None, message: str | None = None) -> BatchResult:
        """Commit items as one atomic batch: one log frame, all of it or none of it (see Store.import_batch)."""
        for item in items:
            validate_key(item.key)
            validate_meta(item.meta)
            validate_content_type(item.content_type)
            validate_message(item.message)
        validate_message(message)
        if pack is not None:
            pack.finish()
        with self.writing() as index:
            # key -> (version, op, hash, content_type, meta), from the index and then from this batch
            current = {key: (row[1], row[3], row[4], row[7], row[9]) for key, row in index.latest_rows(item.key for item in items).items()}
            chain = self.chain(index)
            start = (chain.seq, chain.prev)
            unchanged = unchanged_bytes = 0
            for item in items:
                latest = current.get(item.key)
                if latest is not None and latest[1] == "put" and latest[2:4] == (item.hash, item.content_type):
                    if (unpack_meta(latest[4]) if isinstance(latest[4], bytes) else latest[4] or {}) == item.meta:
                        unchanged += 1
                        unchanged_bytes += item.size
                        continue
                if (pack is None or item.hash not in pack) and not self.objects.exists(item.hash):
                    raise InvalidInput(f"cannot import {item.key!r}: its object {item.hash} is not in the store")
                version = next_version(latest)
                chain.add(op="put", key=item.key, version=version, hash=item.hash, size=item.size,
                          content_type=item.content_type, meta=item.meta, message=item.message or message)  # fmt: skip
                current[item.key] = (version, "put", item.hash, item.content_type, item.meta)
            if not len(chain):
                return BatchResult((), unchanged, unchanged_bytes, (start[0], start[1].hex()))
            frame = self._append(chain)
        return BatchResult(frame.records, unchanged, unchanged_bytes, (chain.seq, chain.prev.hex()))


def next_version(latest: tuple[int, str] | None) -> int:
    return (latest[0] if latest else 0) + 1


def expected_version(value: int | str | None) -> int | None:
    """An --if-version value: a version number, or 0 for "the key has no versions"."""
    if value is None:
        return None
    if value == 0 or (isinstance(value, str) and value.strip() == "0"):
        return 0
    return parse_version(value)


def check_preconditions(key: str, latest: tuple[int, str] | None, if_version: int | None, if_absent: bool) -> None:
    if if_absent and latest is not None and latest[1] != "delete":
        raise PreconditionFailed(f"key {key!r} exists (version {latest[0]}) and --if-absent was given")
    if if_version is not None:
        current = latest[0] if latest else 0
        if current != if_version:
            raise PreconditionFailed(f"key {key!r} is at version {current}, not {if_version}")


def pending_put(key: str, object_id: str, size: int, content_type, meta: dict, message, if_version, if_absent: bool) -> PendingPut:
    """A put whose object is durable, waiting for its frame: decide() runs under the log lock."""
    from .groupcommit import PendingPut  # here: a read never loads groupcommit (its dataclass costs start-up time)

    def decide(index: Index):
        """The unchanged result, or the fields of the new record."""
        latest = index.latest_version(key)
        check_preconditions(key, latest, if_version, if_absent)
        if latest is not None and latest[1] == "put":
            current = Version.from_row(index.version(key, latest[0]))
            if current.hash == object_id and current.content_type == content_type and current.meta == meta:
                return PutResult(current, unchanged=True)
        return (key, latest, object_id, size, content_type, meta, message)

    return PendingPut(key, decide)
