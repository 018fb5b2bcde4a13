"""Keeps the derived views up with the log: the SQLite index, and the Merkle tree in it (treestore.py).

The index is derived: it remembers how far it has applied the log (offset, seq,
chain hash, and the checksum of the last frame it applied), and every use
catches it up from there. A broken database is rebuilt from the log, which is
the truth; a log that no longer holds what the index applied is damage, left
for the operator (reindex). Damaged frames are stepped over and remembered.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from .backend import Scan
from .errors import CorruptIndex, CorruptLog, ImstoreError, Unavailable
from .fsio import crash_point
from .index import Index, IndexState, is_corruption
from .layout import CONFIG
from .log import Log
from .records import HEADER_SIZE, Frame, check_chain

if TYPE_CHECKING:
    from .treestore import TreeTable

__all__ = ["Indexer", "index_query", "chained_frames"]

T = TypeVar("T")

SCRUB_FRAMES = 32  # frames a commit re-checks (~40 µs): see Indexer.scrub


class Indexer:
    """The index of one store, opened lazily, caught up with its log on every use."""

    def __init__(self, log: Log, path: Path, warnings: list[str]):
        self.log = log
        self.path = path
        self.warnings = warnings  # the Store's list: what the user should hear (a rebuild, a cut tail)
        self._index: Index | None = None
        # The log's stamp (size, inode, mtime) at the last check: while it is unchanged, so is the log (RP2).
        self._seen_log_stamp: tuple[int, int, int] | None = None
        self._tree: TreeTable | None = None
        self._damaged: tuple[object, list] | None = None  # (the log stamp it was read at, damaged())

    @property
    def index(self) -> Index:
        """The index, caught up with the log (opened, repaired or rebuilt as needed)."""
        if self._index is None:
            self._index = self._open()
            try:
                self.catch_up()
            except BaseException:
                self._index.close()  # open it again (and catch up) on the next use
                self._index = None
                raise
        return self._index

    def current(self) -> Index:
        """The index for a read: caught up again if the log changed since we last looked.

        A long-lived Store (a server worker) must see records appended by other
        processes, including one that died between its log fsync and its index update.
        """
        index = self.index
        if self.log.stamp() != self._seen_log_stamp:
            self.catch_up()
        return index

    def tree(self, index: Index) -> TreeTable:
        """The Merkle tree kept in this index's database (merkle proofs; treestore.py): derived like the index."""
        if self._tree is None or self._tree.db is not index.db:
            from .treestore import TreeTable  # only when a frame is applied or proven: a plain read never needs it

            self._tree = TreeTable(index.db, self.log)
        return self._tree

    def close(self) -> None:
        if self._index is not None:
            self._index.close()
            self._index = None

    def _open(self) -> Index:
        if not os.path.exists(self.path) and not os.path.exists(self.path.parent / CONFIG):
            # An empty mount point (a NAS gone) or a store renamed away: never create anything in a
            # directory that is not a store (HARDENING D4).
            raise Unavailable(f"the store is unavailable: {self.path.parent} holds no store (no {CONFIG} file)")
        try:
            return Index(self.path)
        except sqlite3.Error as exc:
            if not os.access(self.path.parent, os.W_OK):
                return self._open_read_only()  # nothing can be deleted or written here: work in memory
            if is_corruption(exc):
                # Only a damaged (or outdated) index is deleted: it is derived, and rebuilt from the log.
                self.warnings.append("the index was unreadable or from another version of imstore; rebuilding it from the log")
                Index.remove_files(self.path)
                try:
                    return Index(self.path)
                except sqlite3.Error as again:
                    raise Unavailable(f"cannot create the index at {self.path}: {again}") from None
            # A full disk, an I/O error, a lock held too long: the store is unavailable, and nothing changes.
            raise Unavailable(f"cannot open the index at {self.path}: {exc}") from None

    def _open_read_only(self) -> Index:
        """The index of a store that cannot be written (a read-only mount, a snapshot): every read still works.

        A current index is used as it is (immutable); one that is behind, damaged or
        missing is replaced by a copy in memory, caught up from the log like any other.
        """
        try:
            index = Index(self.path, read_only=True)
        except sqlite3.Error:
            index = None
        if index is not None:
            state = index.state()
            if state.log_end == self.log.size() and self._matches_log(state):
                return index
            copy = index.copy_to_memory()
            index.close()
            return copy
        self.warnings.append("the store is read-only and has no usable index: built one in memory from the log")
        return Index(":memory:")

    def catch_up(self, *, writer: bool = False) -> None:
        """Apply log frames the index has not seen, stepping over damaged ones (noted in the index).

        An index that knew more of the log than the log now holds (the log was cut or
        altered) is damage: CorruptLog, and nothing is rebuilt or cut (reindex does that,
        on purpose). A writer (holding the log lock) cuts off a torn tail, and refuses to
        append after a last record that rotted.
        """
        index = self._index
        assert index is not None
        try:
            # Fast path, no write transaction: the index already ends where the log ends.
            state = index.state()
            stamp = self.log.stamp()
            if state.log_end == stamp[0] and self._matches_log(state):
                self._seen_log_stamp = stamp  # current() skips this check until the log changes
                return
            self._seen_log_stamp = stamp
            state = index.begin()
            try:
                if not self._matches_log(state):
                    if state.log_end:
                        raise CorruptLog(self._describe_mismatch(state))
                    index.clear()
                    state = index.state()
                scan = self._apply_from(index, state)
                index.commit()
            except BaseException:
                index.rollback()
                raise
        except sqlite3.Error as exc:
            raise Unavailable(f"the index cannot be updated: {exc}") from None
        if writer and scan.end_damaged:
            raise CorruptLog(scan.damaged[-1][2] + ": nothing is appended after it (imstore verify names the damage)")
        if scan.torn_at is not None and writer:
            cut = self.log.size() - scan.torn_at
            self.log.repair_tail(scan.torn_at)
            self.warnings.append(
                f"the log ended in a torn record ({cut} bytes at offset {scan.torn_at}, an interrupted write); cut it off"
            )

    def _apply_from(self, index: Index, state: IndexState):
        """Apply every good frame after state; a damaged frame is noted and the chain picked up after it."""
        scan = self.log.scan(state.log_end, skip_damage=True)

        def goes_back(message: str) -> None:
            raise CorruptLog(message)

        for frame in chained_frames(scan, state.last_hash, state.seq, lambda damage: index.note_damage(*damage), goes_back):
            self._apply(index, frame)
        return scan

    def _describe_mismatch(self, state: IndexState) -> str:
        size = self.log.size()
        found = f"it is only {size} bytes long" if size < state.log_end else "it holds other bytes there"
        return (
            f"the index knew the log up to offset {state.log_end} (record seq {state.seq}) but {found}: the log was cut or"
            " altered. Nothing was changed: restore the log, or run 'imstore reindex' to rebuild the index from what"
            " the log holds now (imstore verify shows it)"
        )

    def _matches_log(self, state: IndexState) -> bool:
        """Does the last frame the index applied still sit, unchanged, where the index says it ends?"""
        if state.frame_offset < 0:
            return state.log_end == 0
        if self.log.size() < state.log_end:
            return False
        found = self.log.frame_end_at(state.frame_offset)
        return found is not None and found == (state.log_end, state.frame_checksum)

    def rebuild(self) -> int:
        """Rebuild the index from the log from scratch (the caller holds the log lock); returns the record count.

        Damaged frames are stepped over and noted (their versions are lost); a torn tail is cut.
        """
        self.close()
        Index.remove_files(self.path)
        self._index = self._open()
        self.catch_up(writer=True)
        return self._index.count()

    def confirm(self, row: tuple, span: tuple[int, int, int] | None | bool = False) -> None:
        """Check an index row against its record in the log (one read at the offset the index gives).

        An edited or damaged index can then never make a read serve another version's bytes.
        span: the row's record_span when the caller read it with the row (False: look it up).
        """
        key, version, seq, op, object_hash, size = row[:6]
        if span is False:
            span = index_query(lambda: self.index.record_span(key, version))
        if span is None:
            raise CorruptIndex(f"the index has no place in the log for {key!r} version {version}: run imstore reindex")
        frame_offset, offset, length = span
        try:
            record = self.log.read_record(offset, length)
            found = (record.key, record.version, record.seq, record.op, record.hash, record.size)
            matches = found == (key, version, seq, op, object_hash, size)
        except CorruptLog:
            matches = False
        if matches:
            return
        if self.log.read_frame_at(frame_offset) is None:  # the frame fails its checksum: the log is damaged there
            raise CorruptLog(f"{key!r} version {version} is in a damaged log frame (at offset {frame_offset}); imstore verify names it")
        raise CorruptIndex(
            f"the index does not match the log for {key!r} version {version} (record at offset {offset}):"
            " the index was altered or damaged; run imstore reindex"
        )

    def _scrub(self, index: Index) -> tuple[int, int | None]:
        """Check a little more of the already indexed log: (where the check stopped, a damaged offset or None).

        Damage behind the index's position is otherwise found only by verify or a
        rebuild. Each commit checks the checksums of SCRUB_FRAMES more frames from
        where the last one stopped, wrapping round, so a writer notices damage
        anywhere in the log within (frames in the log / SCRUB_FRAMES) commits; the
        damage is noted in the index and every later write warns about it.
        """
        state = index.state()
        start = index.scrub_offset()
        if start >= state.log_end:
            start = 0
        stopped, damaged_at = self.log.check_frames(start, SCRUB_FRAMES, state.log_end)
        return (0 if stopped >= state.log_end else stopped), damaged_at  # at the end: the next check starts over

    def _note_damage_at(self, index: Index, offset: int, end: int) -> int:
        """Note the damage a scan from offset steps over; returns where the good frames resume."""
        scan = self.log.scan(offset, end, skip_damage=True)
        for frame in scan:
            for damage in scan.damaged:
                index.note_damage(*damage)
            return frame.offset
        for damage in scan.damaged:
            index.note_damage(*damage)
        if not scan.damaged:  # nothing good follows before the indexed end: all of it is damaged
            index.note_damage(offset, end, f"log damaged at offset {offset}: no valid record follows up to offset {end}")
        return end

    def damage_note(self) -> str | None:
        """One line on the damaged stretches of the log, if the index was built around any."""
        damaged = self.damaged()
        if not damaged:
            return None
        places = ", ".join(f"{offset}-{end}" for offset, end, _message in damaged[:5])
        return f"the log is damaged at offset(s) {places}: versions stored there cannot be read (imstore verify names them)"

    def damaged(self) -> list[tuple[int, int, str]]:
        """(offset, end, message) of each damaged stretch of the log the index was built around."""
        # Every latest read asks (H2): the table only changes when the index takes in log it had not
        # seen, so one query per log stamp is enough (a rebuild of the same log notes the same damage).
        stamp = self._seen_log_stamp
        if stamp is not None and self._damaged is not None and self._damaged[0] == stamp:
            return self._damaged[1]
        found = index_query(lambda: self.index.damaged())
        self._damaged = (self._seen_log_stamp, found) if self._seen_log_stamp == stamp else None
        return found

    def applied(self, frame: Frame, payload: bytes | None = None) -> None:
        """Apply a frame this process just appended (under the lock), and check a few older frames.

        A reader may have applied it already (it is durable and visible). A failing
        index is left behind: the log is the truth and the index catches up later.
        payload: the frame's bytes, still in memory (the tree hashes its records from them).
        """
        index = self.index
        damaged_at = None
        try:
            try:
                scrubbed, damaged_at = self._scrub(index)
            except (ImstoreError, OSError):  # the write is committed: a check that cannot run now waits
                scrubbed = index.scrub_offset()
            if index.begin().log_end == frame.offset:
                self._apply(index, frame, payload)
            if damaged_at is not None:
                try:
                    scrubbed = self._note_damage_at(index, damaged_at, frame.offset)
                except ImstoreError as exc:  # damage that cannot even be stepped over: note it whole
                    index.note_damage(damaged_at, frame.offset, str(exc))
                    scrubbed = 0
            index.set_scrub_offset(scrubbed)
            index.commit()
            self._seen_log_stamp = None  # our own record changed the log: the next read checks it (cheaply)
        except sqlite3.Error:
            index.rollback()
        except BaseException:
            index.rollback()  # never leave the index's transaction open
            raise
        if damaged_at is not None:
            note = self.damage_note()
            if note is not None and note not in self.warnings:
                self.warnings.append(note)
        crash_point("index-updated")

    def _apply(self, index: Index, frame: Frame, payload: bytes | memoryview | None = None) -> None:
        """A frame's index rows and its tree's leaves, in the caller's transaction (payload: its bytes, if in memory)."""
        index.apply(frame.records, frame.offset, frame.end, frame.checksum, frame.spans)
        self.tree(index).add_frame(frame, payload)

    def stage_shipped(self, frames: list[Frame], data: bytes) -> bool:
        """Apply frames about to be appended as received (a pull, under the lock) in a transaction left open.

        They were decoded once, by replica.check_frames, from data (their bytes, from frames[0].offset),
        which also gives the tree its leaves. The transaction is committed by applied_shipped once the
        log holds them, or rolled back by unstage; False (nothing open) when the index is not right
        behind them. Lets a clone build the index while its objects still arrive.
        """
        index = self.index
        try:
            if not frames or index.begin().log_end != frames[0].offset:
                index.rollback()
                return False
            for frame in frames:
                start = frame.offset + HEADER_SIZE - frames[0].offset  # the frame's payload within data (not in the log yet)
                self._apply(index, frame, memoryview(data)[start : frame.end - frames[0].offset])
            return True
        except sqlite3.Error:
            index.rollback()  # the log is the truth: applied_shipped catches up from it
            return False
        except BaseException:
            index.rollback()
            raise

    def unstage(self) -> None:
        """Drop what stage_shipped applied (the frames were not appended)."""
        if self._index is not None:
            self._index.rollback()

    def applied_shipped(self, frames: list[Frame], staged: bool = False) -> None:
        """Apply frames this process just appended as received (a pull; under the lock) in one transaction.

        staged: stage_shipped applied them already; only the commit is left. Else they are applied
        now (no second decode). An index not right behind them is caught up from the log instead.
        """
        index = self.index
        try:
            if not staged and frames and index.begin().log_end == frames[0].offset:
                for frame in frames:
                    self._apply(index, frame)
            if index.db.in_transaction:
                index.commit()
        except sqlite3.Error:
            index.rollback()  # the log is the truth: the catch-up below (or the next use) applies them
        except BaseException:
            index.rollback()
            raise
        self._seen_log_stamp = None
        self.catch_up()
        crash_point("index-updated")


def chained_frames(scan: Scan, prev: bytes, seq: int, damaged: Callable[[tuple[int, int, str]], None],
                   goes_back: Callable[[str], None]) -> Iterator[Frame]:  # fmt: skip
    """The good frames of a scan, each checked to continue the chain from (prev, seq) (check_chain).

    Each damaged stretch the scan steps over is handed to damaged(); the records in it are unknown,
    so the chain is taken up again at the next good frame, whose first record must come later than
    the last one before the damage (else goes_back(message), and the chain goes on from there)."""
    noted = 0
    for frame in scan:
        if len(scan.damaged) > noted:
            for damage in scan.damaged[noted:]:
                damaged(damage)
            noted = len(scan.damaged)
            first = frame.records[0]
            if first.seq <= seq:
                goes_back(f"the log's record at offset {frame.offset} (seq {first.seq}) goes back after damage (seq {seq})")
            prev, seq = first.prev, first.seq - 1
        prev, seq = check_chain(frame, prev, seq)
        yield frame
    for damage in scan.damaged[noted:]:
        damaged(damage)


def index_query(query: Callable[[], T]) -> T:
    """Run an index query: a damaged database is CorruptIndex (reindex rebuilds it); any other failure
    (EIO, a vanished file, a full disk) means the store is unavailable."""
    try:
        return query()
    except sqlite3.Error as exc:
        if is_corruption(exc):
            raise CorruptIndex(f"the index is damaged ({exc}): run imstore reindex to rebuild it from the log") from None
        raise Unavailable(f"the index cannot be read: {exc}") from None
