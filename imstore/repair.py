"""repair --from SOURCE: heal a damaged log stretch or object with a replica's copy, once it is proven the same bytes.

A damaged log stretch (found by reading the whole log, checksums and all) is replaced
only by the source's bytes for exactly that stretch that are whole valid frames,
whose first record continues the chain from the record before the damage and whose
last record's hash is the `prev` of the record after it (seq continuing too). The
chain then pins every byte: the hash of each record is named by the next one, so
these are the bytes this log held. Damage at the log's end has no record after it
to prove it: it is refused. Objects are proven by their own hash, and written loose
(a damaged entry in a pack stays as it is: the loose copy, which reads look for
first, stands for it, and repack drops the slice). Nothing unproven is ever written;
the log's bytes are written back in place (the same bytes), fsynced, and the index
rebuilt, all under the writers' lock.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from .errors import BadUpstream, CorruptObject, ImstoreError, InvalidInput, ObjectNotFound, from_os_error
from .feed import NoFrameThere, Source
from .fsio import fsync_fd
from .hashing import blake3
from .indexer import index_query
from .objects import ObjectLocation
from .records import GENESIS, Frame
from .replica import check_frames
from .store import Store

__all__ = ["RepairReport", "repair"]


@dataclass
class RepairReport:
    frames: list[str] = field(default_factory=list)  # each stretch healed: "offset-end"
    objects: list[str] = field(default_factory=list)  # each object healed (its id)
    refused: list[str] = field(default_factory=list)  # what could not be proven, and why
    superseded: list[str] = field(default_factory=list)  # "<id> in <pack>": damaged pack entries a loose copy now stands for

    def to_json(self) -> dict:
        return {"log_stretches": self.frames, "objects": self.objects, "superseded": self.superseded, "refused": self.refused,
                "ok": not self.refused}  # fmt: skip


def repair(store: Store, source: Source) -> RepairReport:
    """Heal every damaged log stretch and damaged or missing object that source proves it holds (see module)."""
    described = source.describe()
    if described["store_id"] != store.store_id:
        raise InvalidInput(f"{source.location} holds store {described['store_id']}, not this store ({store.store_id})")
    report = RepairReport()
    with store.log.locked():
        for offset, end, _reason in _damaged_stretches(store):
            try:
                _heal_stretch(store, source, offset, end)
                report.frames.append(f"{offset}-{end}")
            except (BadUpstream, NoFrameThere) as exc:
                report.refused.append(f"log {offset}-{end}: {exc}")
        if report.frames:
            store.indexer.rebuild()
    _heal_objects(store, source, report)
    return report


# ============================================================ the log
def _damaged_stretches(store: Store) -> list[tuple[int, int, str]]:
    """Every damaged stretch of the log, found by reading all of it (the index may not know of recent rot)."""
    scan = store.log.scan(0, skip_damage=True)
    for _frame in scan:
        pass
    return list(scan.damaged)


def _neighbours(store: Store, offset: int, end: int) -> tuple[Frame | None, Frame | None, int]:
    """The good frame ending at offset, the one starting at end, and the epoch before offset."""
    before = after = None
    epoch = 0
    scan = store.log.scan(0, skip_damage=True)
    for frame in scan:
        if frame.offset >= end:
            after = frame if frame.offset == end else None
            break
        if frame.end <= offset:
            before = frame
            epoch = max([epoch, *(record.version for record in frame.records if record.is_epoch)])
    if before is not None and before.end != offset:
        before = None
    return before, after, epoch


def _heal_stretch(store: Store, source: Source, offset: int, end: int) -> None:
    before, after, epoch = _neighbours(store, offset, end)
    if offset > 0 and before is None:
        raise BadUpstream("no good record right before the damage to check the chain from")
    if after is None:
        raise BadUpstream("no good record after the damage: nothing in this log can prove a copy is the bytes it held")
    prev, seq = (before.records[-1].record_hash, before.records[-1].seq) if before is not None else (GENESIS, 0)
    data = source.frames(offset, end - offset).data
    if len(data) != end - offset:
        raise BadUpstream(f"{source.location} has other frames there ({len(data)} bytes, not {end - offset})")
    frames = check_frames(data, offset, prev, seq, epoch)
    last = frames[-1].records[-1]
    first_after = after.records[0]
    if first_after.prev != last.record_hash or first_after.seq != last.seq + 1:
        raise BadUpstream(f"{source.location}'s copy does not chain to the record after the damage (seq {first_after.seq})")
    try:
        fd = os.open(store.log.path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.pwrite(fd, data, offset)  # the same bytes the log held: proven by the chain on both sides
            fsync_fd(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise from_os_error(exc, "writing the repaired log stretch") from None


# ============================================================ objects
def _heal_objects(store: Store, source: Source, report: RepairReport) -> None:
    index = store.indexer.current()
    objects = store.objects
    objects.refresh()
    for object_id in sorted(index_query(index.hashes)):
        try:
            objects.open(object_id).verify()
            continue
        except (CorruptObject, ObjectNotFound):
            pass
        row = index_query(lambda object_id=object_id: index.db.execute(
            "SELECT frame_offset FROM versions WHERE hash = ? AND frame_offset IS NOT NULL LIMIT 1", (object_id,)).fetchone())  # fmt: skip
        found = store.log.frame_end_at(row[0]) if row is not None else None
        if found is None:
            report.refused.append(f"object {object_id}: the index has no log frame naming it")
            continue
        damaged = objects.locate(object_id)
        try:
            data = _fetch(source, object_id, row[0], found[0])
            # Loose: a damaged loose copy is replaced only by bytes that hash to its id (objects.py); a damaged
            # pack entry is left as it is (packs are never written to) and the new loose copy, which every
            # read looks for first, stands for it; repack drops the damaged slice.
            objects.write_bytes(data)
            objects.refresh()
            if objects.locate(object_id) != ObjectLocation(objects.loose_path(object_id), 0, len(data)):
                raise ImstoreError(f"the good copy of object {object_id} is not the one reads find")
            objects.open(object_id).verify()
            report.objects.append(object_id)
            if damaged is not None and objects.packs is not None and damaged.path.parent == objects.packs.pack_dir:
                report.superseded.append(f"{object_id} in {damaged.path.name}")
        except ImstoreError as exc:
            report.refused.append(f"object {object_id}: {exc}")


def _fetch(source: Source, object_id: str, start: int, end: int) -> bytes:
    for found_id, size, chunks in source.objects(start, end):
        if found_id != object_id:
            for _chunk in chunks:
                pass
            continue
        data = b"".join(chunks)
        if len(data) != size or blake3(data).hexdigest() != object_id:
            raise BadUpstream(f"the bytes {source.location} sent for object {object_id} do not hash to it")
        return data
    raise BadUpstream(f"{source.location} did not send object {object_id}")
