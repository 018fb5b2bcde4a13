"""Replication: bring a store's log up with a source's, byte for byte, checking every byte first.

`pull` takes the source's frames after this store's head in rounds. Each round:
1. the frames are checked against this log's tail (`check_frames`): they start at
   its end, each checksum matches, each payload decodes, seq and prev continue
   the chain. Anything else is `BadUpstream` (exit 5) and nothing is written;
2. every object their records name that this store lacks is fetched, hashed
   against its id and made durable (one pack per round, or loose objects);
3. only then are the frames appended, as received (`Committer.append_shipped`:
   the one appender, under the writers' lock), and the index catches up.
A source whose log does not hold this store's head has diverged: `Diverged`
(exit 5), naming the last common record, and nothing is written. Because the
logs are byte-identical, offsets and chain hashes mean the same on every copy.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from . import layout
from .errors import BadUpstream, CorruptLog, Diverged, InvalidInput, from_os_error
from .feed import Frames, NoFrameThere, Source
from .fsio import atomic_write, crash_point
from .hashing import blake3, checksum16
from .packcopy import PackTaker
from .records import HEADER, HEADER_SIZE, MAX_FRAME, Frame, check_chain, decode_payload, make_frame
from .store import Store

__all__ = ["PullResult", "pull", "clone", "check_frames", "last_common", "read_upstream", "remember_upstream", "ROUND_BYTES"]

ROUND_BYTES = 8 << 20  # frames taken per round (at least one whole frame, however big)
LOOSE_MIN = 8 << 20  # objects this big are streamed to their own file; smaller ones go in the round's pack
PACK_MIN = 64  # a round with fewer new objects than this writes them loose (a standby's rounds are small)


@dataclass(frozen=True)
class PullResult:
    """What a pull did: records and frames appended, objects fetched, and where the log stands now."""

    source: str
    frames: int
    records: int
    objects: int
    object_bytes: int
    log_bytes: int
    seq: int
    head: str  # chain hash of the last record (hex), "" for an empty log
    log_end: int

    @property
    def up_to_date(self) -> bool:
        return self.frames == 0

    def to_json(self) -> dict:
        return {"source": self.source, "frames": self.frames, "records": self.records, "objects": self.objects,
                "object_bytes": self.object_bytes, "log_bytes": self.log_bytes, "seq": self.seq, "head": self.head,
                "log_end": self.log_end, "up_to_date": self.up_to_date}  # fmt: skip


# ============================================================ the frame checks
def check_frames(data: bytes, start: int, prev: bytes, seq: int, epoch: int = 0) -> list[Frame]:
    """Parse raw frames meant to go at offset start after the record (seq, prev): each checked, or BadUpstream.

    Whole frames only; checksum, payload, seq + 1 and prev must all hold, and an epoch record
    must be this store's epoch + 1 (REPLICATION.md, "What each frame must pass"). The frames'
    bytes are appended unchanged, so they are exactly what this checked.
    """
    frames: list[Frame] = []
    position = 0
    while position < len(data):
        offset = start + position
        if position + HEADER_SIZE > len(data):
            raise BadUpstream(f"the source sent part of a frame header at offset {offset}; nothing was appended")
        length, checksum = HEADER.unpack_from(data, position)
        payload_end = position + HEADER_SIZE + length
        if length == 0 or length > MAX_FRAME or payload_end > len(data):
            raise BadUpstream(f"the source's frame at offset {offset} has a bad length ({length}); nothing was appended")
        payload = data[position + HEADER_SIZE : payload_end]
        if checksum16(payload) != checksum:
            raise BadUpstream(f"the source's frame at offset {offset} fails its checksum; nothing was appended")
        try:
            frame = make_frame(offset, payload, decode_payload(payload), checksum)
            prev, seq = check_chain(frame, prev, seq)
        except CorruptLog as exc:
            raise BadUpstream(f"the source's frame at offset {offset} was refused: {exc}; nothing was appended") from None
        for record in frame.records:
            if record.is_epoch:
                if record.version != epoch + 1:
                    raise BadUpstream(f"the source's frame at offset {offset} holds epoch {record.version}, but this store is at"
                                      f" epoch {epoch} (an epoch must be the one before it + 1); nothing was appended")  # fmt: skip
                epoch = record.version
        frames.append(frame)
        position = payload_end
    return frames


# ============================================================ pull and clone
def pull(store: Store, source: Source, *, progress: Callable[[int, int], None] | None = None, round_bytes: int = ROUND_BYTES,
         wait: float = 0.0, on_answer: Callable[[Frames], None] | None = None, described: dict | None = None,
         check_divergence: bool = True) -> PullResult:  # fmt: skip
    """Catch store up with source (see the module docstring); returns what was done.

    wait: seconds the first request for frames may wait for the source's log to grow
    (a standby's long poll); on_answer sees each answer (the source's end and seq: the lag).
    A follower that just pulled from this source may pass the description it has and skip
    the divergence probe: its head came from the source (and a chain that does not
    continue is still refused by check_frames).
    """
    described = described if described is not None else source.describe()
    if described["store_id"] != store.store_id:
        raise InvalidInput(f"{source.location} holds store {described['store_id']}, not this store ({store.store_id})")
    _take_tokens(store.root, described["tokens"])  # first: they do not wait for the frames (a standby's round is long)
    totals = {"frames": 0, "records": 0, "objects": 0, "object_bytes": 0, "log_bytes": 0}
    state = store.indexer.current().state()
    if check_divergence:
        _check_not_diverged(store, source, state, described["log_end"])
    started = state.log_end
    target = described["log_end"]
    # A store with no log yet takes the source's packs whole (R13), beside the checks of the first frames.
    packs = PackTaker(store.objects.packs.pack_dir, source) if state.log_end == 0 else None
    try:
        while True:
            index = store.indexer.current()
            state, epoch = index.state(), index.epoch()
            source.epoch = epoch  # each request carries it: a source of a higher epoch answers 409 (R10)
            answer = source.frames(state.log_end, round_bytes, wait)
            data, target, wait = answer.data, answer.log_end, 0.0  # only the first request waits
            if on_answer is not None:
                on_answer(answer)
            if answer.epoch is not None and answer.epoch < epoch:
                raise BadUpstream(f"{source.location} is at epoch {answer.epoch}, lower than this store's {epoch}: it was"
                                  " superseded (a primary that was failed over); nothing was appended")  # fmt: skip
            if not data:
                break
            frames = check_frames(data, state.log_end, state.last_hash, state.seq, epoch)
            fetched = _append_round(store, source, data, frames, (state.log_end, state.seq, state.last_hash), packs)
            crash_point("replica-frames-appended")
            for name, amount in (("frames", len(frames)), ("records", sum(len(frame.records) for frame in frames)),
                                 ("objects", fetched[0]), ("object_bytes", fetched[1]), ("log_bytes", len(data))):  # fmt: skip
                totals[name] += amount
            if progress is not None:
                progress(state.log_end + len(data) - started, max(target - started, 1))
        if packs is not None:
            packs.wait()  # packs taken but no frames (an empty source): still durable and checked
    finally:
        if packs is not None:
            packs.close()
            totals["objects"] += packs.objects
            totals["object_bytes"] += packs.bytes
    state = store.indexer.current().state()
    return PullResult(source.location, seq=state.seq, head=state.last_hash.hex() if state.seq else "", log_end=state.log_end,
                      **totals)  # fmt: skip


def _append_round(store: Store, source: Source, data: bytes, frames: list[Frame], head: tuple[int, int, bytes],
                  packs: PackTaker | None) -> tuple[int, int]:  # fmt: skip
    """Objects first (durable, each checked), then the frames; (objects fetched one by one, their bytes)."""
    fetched = (0, 0)

    def objects_durable() -> None:
        nonlocal fetched
        known = packs.wait() if packs is not None else set()
        fetched = _store_objects(store, source, frames, head[0], head[0] + len(data), known)
        crash_point("replica-objects-durable")

    if packs is not None and not packs.done:  # the index rows are staged while the packs arrive (a clone)
        store.committer.append_shipped(data, head, frames, objects_durable)
    else:
        objects_durable()
        store.committer.append_shipped(data, head, frames)
    return fetched


def clone(source: Source, destination: str | os.PathLike, *, progress: Callable[[int, int], None] | None = None) -> PullResult:
    """A new store at destination with source's config (its store id) and log; source is remembered as its upstream."""
    root = Path(destination).expanduser().absolute()
    if (root / layout.CONFIG).exists() or not layout.may_create_at(root):
        raise InvalidInput(f"{root} exists and is not empty; to catch a copy up, use: imstore pull --store {root}")
    described = source.describe()
    layout.create_store(root, described["config"])
    remember_upstream(root, source.location)  # a clone cut short is finished by a plain `imstore pull`
    with Store.open(root) as store:
        return pull(store, source, progress=progress)


def remember_upstream(root: Path, location: str) -> None:
    """Keep where this copy pulls from (node-local: a standby's own business)."""
    try:
        atomic_write(root / layout.UPSTREAM, (location + "\n").encode("utf-8"), 0o644)
    except OSError as exc:
        raise from_os_error(exc, "remembering the upstream") from None


def read_upstream(root: Path) -> str | None:
    try:
        return (root / layout.UPSTREAM).read_text("utf-8").strip() or None
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise from_os_error(exc, "reading the upstream file") from None


# ============================================================ divergence
def _check_not_diverged(store: Store, source: Source, state, source_end: int) -> None:
    """The source's log must hold this store's last frame, byte for byte, where this log has it.

    The chain makes that enough: the last record's hash covers every record before it.
    """
    if state.frame_offset < 0:
        return
    ours = store.log.raw(state.frame_offset, 1)
    try:
        theirs = source.frames(state.frame_offset, 1).data
    except NoFrameThere:
        theirs = b""
    if theirs[: len(ours)] == ours and len(theirs) >= len(ours):
        return
    common = last_common(store, source)
    if common is not None and common.end == source_end:
        why = f"it is behind this store (its log ends at record seq {common.records[-1].seq}, which this store holds too)"
    else:
        why = f"its log does not hold this store's record seq {state.seq} ({state.last_hash.hex()[:16]}); {_describe_common(common)}"
    raise Diverged(f"{source.location} has diverged from this store: {why}. Nothing was written")


def last_common(store: Store, source: Source) -> Frame | None:
    """The last frame both logs hold, byte for byte, found by walking them from the start."""
    offset, last = 0, None
    while True:
        ours = store.log.raw(offset, ROUND_BYTES)
        if not ours:
            return last
        try:
            theirs = source.frames(offset, len(ours)).data  # equal logs cut equal frames: the same bytes come back
        except NoFrameThere:
            return last
        for frame, (start, end) in _frames_of(ours, offset):
            if theirs[start - offset : end - offset] != ours[start - offset : end - offset]:
                return last
            last = frame
        offset += len(ours)


def _frames_of(data: bytes, offset: int) -> Iterator[tuple[Frame, tuple[int, int]]]:
    position = 0
    while position + HEADER_SIZE <= len(data):
        length, checksum = HEADER.unpack_from(data, position)
        payload = data[position + HEADER_SIZE : position + HEADER_SIZE + length]
        frame = make_frame(offset + position, payload, decode_payload(payload), checksum)
        yield frame, (offset + position, frame.end)
        position += HEADER_SIZE + length


def _describe_common(frame: Frame | None) -> str:
    if frame is None:
        return "the two logs have no record in common"
    record = frame.records[-1]
    return f"the last record they share is seq {record.seq} ({record.record_hash.hex()[:16]}, log offset {frame.end})"


# ============================================================ objects
def _store_objects(store: Store, source: Source, frames: list[Frame], start: int, end: int,
                   known: set[str] = frozenset()) -> tuple[int, int]:  # fmt: skip
    """Fetch the objects the frames name and this store lacks; hash each; durable on return. (count, bytes).

    known: objects this pull already holds durably (in the packs it took whole).
    """
    named: dict[str, int] = {}
    for frame in frames:
        for record in frame.records:
            if record.op == "put":
                named.setdefault(record.hash, record.size)
    objects = store.objects
    objects.refresh()
    missing = {object_id for object_id in named if object_id not in known and not objects.exists(object_id)}
    if not missing:
        return 0, 0
    # Many objects go into one pack as they arrive (one fsync; visible only once finished); a few are
    # kept in memory and written loose at the end (a standby's rounds: no pack per put).
    pack = objects.new_pack() if len(missing) >= PACK_MIN else None
    few: list[bytes] = []
    fetched = fetched_bytes = 0
    try:
        for object_id, size, chunks in source.objects(start, end):
            if object_id not in named:
                raise BadUpstream(f"the source sent object {object_id}, which its frames do not name; nothing was appended")
            if size != named[object_id]:
                raise BadUpstream(f"the source sent {size} bytes for object {object_id}, whose record says {named[object_id]}")
            if object_id not in missing:
                for _chunk in chunks:
                    pass
                continue
            if size >= LOOSE_MIN:
                objects.write_stream(_hash_checked(chunks, object_id, size))  # the check raises before the file is kept
            else:
                data = b"".join(chunks)
                _check_bytes(data, object_id, size)
                if pack is not None:
                    pack.add(object_id, data)
                else:
                    few.append(data)
            missing.discard(object_id)
            fetched += 1
            fetched_bytes += size
        if missing:
            raise BadUpstream(f"the source did not send {len(missing)} object(s) its frames name (e.g. {min(missing)});"
                              " nothing was appended")  # fmt: skip
        if pack is not None:
            pack.finish()
            objects.refresh()
    except BaseException:
        if pack is not None:
            pack.abort()
        raise
    for answer in objects.write_many(few) if few else ():
        if not isinstance(answer, tuple):
            raise answer
    return fetched, fetched_bytes


def _check_bytes(data: bytes, object_id: str, size: int) -> None:
    if len(data) != size or blake3(data).hexdigest() != object_id:
        raise BadUpstream(f"the bytes the source sent for object {object_id} do not hash to it; nothing was appended")


def _hash_checked(chunks: Iterator[bytes], object_id: str, size: int) -> Iterator[bytes]:
    """Pass chunks on, hashing them; raise after the last one if they are not object_id's bytes."""
    hasher, seen = blake3(), 0
    for chunk in chunks:
        hasher.update(chunk)
        seen += len(chunk)
        yield chunk
    if seen != size or hasher.hexdigest() != object_id:
        raise BadUpstream(f"the bytes the source sent for object {object_id} do not hash to it; nothing was appended")


# ============================================================ tokens
def _take_tokens(root: Path, tokens: bytes | None) -> None:
    """Take the source's token file whole (hashes only): one token works on every node, revocations too."""
    path = root / layout.TOKENS
    try:
        current = path.read_bytes()
    except FileNotFoundError:
        current = None
    except OSError as exc:
        raise from_os_error(exc, "reading the token file") from None
    if tokens == current:
        return
    try:
        if tokens is None:
            path.unlink()
        else:
            atomic_write(path, tokens, 0o600)
    except OSError as exc:
        raise from_os_error(exc, "writing the token file") from None
