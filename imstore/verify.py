"""verify: check the chain, every record, every object's hash, and the index against the log."""

from __future__ import annotations

from collections.abc import Callable

from .errors import CorruptLog, ImstoreError
from .indexer import Indexer, chained_frames, index_query
from .log import Log
from .model import VerifyReport, Version
from .objects import ObjectReader, ObjectStore
from .records import GENESIS

__all__ = ["verify"]


def verify(log: Log, objects: ObjectStore, indexer: Indexer, progress: Callable[[int, int], None] | None = None) -> VerifyReport:
    """A full check of one store; problems make the report fail, warnings and notes do not."""
    report = VerifyReport()
    referenced: dict[str, str] = {}
    latest_version: dict[str, int] = {}
    log_versions: list[Version] = []
    epoch = 0
    try:
        scan = log.scan(0, skip_damage=True)
        for frame in chained_frames(scan, GENESIS, 0, lambda damage: report.problems.append(damage[2]), report.problems.append):
            for record in frame.records:
                if record.is_epoch:  # promotions go 1, 2, 3 ... in log order (R7); never a key's version
                    if record.version != epoch + 1:
                        report.problems.append(f"record seq {record.seq}: epoch {record.version} follows epoch {epoch}")
                    epoch = record.version
                    continue
                expected = latest_version.get(record.key, 0) + 1
                if record.version != expected:
                    report.problems.append(f"record seq {record.seq}: key {record.key!r} has version {record.version}, expected {expected}")
                latest_version[record.key] = record.version
                if record.hash:
                    referenced.setdefault(record.hash, f"{record.key!r} version {record.version}")
                log_versions.append(Version.from_record(record))
        if scan.torn_at is not None:
            report.warnings.append(f"the log ends in a torn record at offset {scan.torn_at}; the next write cuts it off")
    except CorruptLog as exc:
        report.problems.append(str(exc))
    report.records = len(log_versions)
    report.keys = len(latest_version)
    _verify_index(report, indexer, log_versions)
    _verify_objects(report, objects, referenced, progress)
    _note_orphans(report, log)
    return report


def _note_orphans(report: VerifyReport, log: Log) -> None:
    """Frames an old primary kept aside at a rejoin (R11): not history, never deleted, always reported."""
    directory = log.directory / "orphans"
    for path in sorted(directory.glob("*.log")) if directory.is_dir() else ():
        report.notes.append(f"log/orphans/{path.name}: {path.stat().st_size} bytes of frames an old primary wrote that the new"
                            " primary never had (kept aside, read-only, at imstore rejoin)")  # fmt: skip


def _verify_index(report: VerifyReport, indexer: Indexer, log_versions: list[Version]) -> None:
    try:
        index = indexer.index
        check = index_query(lambda: index.db.execute("PRAGMA quick_check").fetchone()[0])
        if check != "ok":
            report.problems.append(f"the index database is damaged ({check}): run imstore reindex")
            return
        indexed = index_query(lambda: [Version.from_row(row) for row in index.all_rows()])
    except ImstoreError as exc:
        report.problems.append(f"index: {exc}")
        return
    if indexed != log_versions:
        pairs = zip(indexed, log_versions, strict=False)
        differing = next((a.seq for a, b in pairs if a != b), min(len(indexed), len(log_versions)) + 1)
        report.problems.append(
            f"the index disagrees with the log (from seq {differing}; {len(indexed)} vs {len(log_versions)} records): run imstore reindex"
        )


def _verify_objects(report: VerifyReport, objects: ObjectStore, referenced: dict[str, str], progress) -> None:
    try:
        present = set(objects.iter_ids())
    except (ImstoreError, OSError) as exc:
        report.problems.append(f"objects: {exc}")
        return
    total = len(present | set(referenced))
    for number, object_id in enumerate(sorted(present | set(referenced)), 1):
        if progress:
            progress(number, total)
        where = referenced.get(object_id)
        if object_id not in present:
            report.problems.append(f"object {object_id} is missing (needed by {where})")
            continue
        report.objects += 1  # checked, whatever the check finds
        try:
            reader = objects.open(object_id)
            report.bytes += reader.size
            reader.verify()
        except ImstoreError as exc:
            report.problems.append(f"object {object_id} is damaged{f' (needed by {where})' if where else ''}: {exc}")
            continue
        if where is None:
            report.notes.append(f"object {object_id} is not referenced by any record")
        _note_superseded_copy(report, objects, object_id, reader.local_file())
    problems, notes = objects.check()
    report.problems.extend(problems)
    report.notes.extend(notes)


def _note_superseded_copy(report: VerifyReport, objects: ObjectStore, object_id: str, read_from) -> None:
    """Note a damaged pack copy of an object that a good loose copy stands for (R12's repair): kept until repack."""
    in_pack = objects.packs.locate(object_id) if objects.packs is not None else None
    if in_pack is None or read_from is None or in_pack.path == read_from.path:
        return  # the usual case: one copy, and it was just checked
    try:
        ObjectReader(object_id, in_pack).verify()
    except ImstoreError:
        report.notes.append(f"object {object_id}: its copy in {in_pack.path.name} is damaged; the good loose copy stands"
                            " for it (imstore repack drops the damaged copy)")  # fmt: skip
