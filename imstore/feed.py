"""What a replication source serves, and the two ways to reach one: a store path or `imstore serve`.

A source offers four things (the `Source` protocol): a description (its store id,
its exact `config` bytes, its log's end and its token file), raw log frames from
an offset (whole valid frames only, byte for byte: `Log.raw`), and the objects
named by the records of a stretch of its log, as one stream:

    per object: 32-byte raw id | u64 big-endian length | the bytes

Nothing a source sends is trusted: replica.py checks every frame and hashes
every object before any of it is written. The server's routes (server/feed_routes.py)
are thin over the functions here, so a path and a URL serve the same bytes.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import ssl
import struct
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import NamedTuple, Protocol
from urllib.parse import urlencode

from . import errors, layout
from .errors import BadUpstream, CorruptObject, Diverged, ImstoreError, NoStore, NotFound, Unavailable, from_os_error
from .fsio import CHUNK_SIZE
from .hashing import blake3
from .log import Log
from .objects import ObjectStore
from .packs import PackSet
from .records import HEADER_SIZE, MAX_FRAME

__all__ = ["Source", "Frames", "PathSource", "HttpSource", "NoFrameThere", "open_source", "describe", "object_stream", "named_objects",
           "OBJECT_ENTRY", "LOG_END_HEADER", "MAX_WAIT", "pack_listing", "pack_file_path"]  # fmt: skip

OBJECT_ENTRY = struct.Struct(">32sQ")
LOG_END_HEADER = "X-Imstore-Log-End"
HEAD_SEQ_HEADER = "X-Imstore-Head-Seq"
NODE_HEADER = "X-Imstore-Node"
EPOCH_HEADER = "X-Imstore-Epoch"  # on requests: the requester's epoch; on answers: the source's (R10)
MAX_WAIT = 30.0  # seconds a long poll for new frames may wait
_POLL = 0.02  # how often a path source's long poll looks at the log's size
_STREAM_PIECE = 1 << 20  # the object stream is written in pieces of about this size
PACK_FILE = re.compile(r"pack-[0-9a-f]{40}\.(idx|pack)")
_WRITE_WAIT = 0.05  # seconds to wait for a frame whose header is there but not yet all of it


class NoFrameThere(Diverged):
    """The source's log has no frame starting at the offset asked for (it is shorter, or other bytes are there)."""

    def __init__(self, log_end: int):
        super().__init__(f"the source's log has no frame there (it ends at offset {log_end}): it has diverged from this copy")
        self.log_end = log_end


class Frames(NamedTuple):
    """An answer for frames: the raw bytes, where the source's log ends, and its last seq (None: not known)."""

    data: bytes
    log_end: int
    seq: int | None = None
    epoch: int | None = None


class Source(Protocol):
    location: str
    epoch: int  # the puller's epoch, sent with each request (R10)

    def describe(self) -> dict: ...  # {"store_id", "config": bytes, "log_end", "tokens": bytes | None}
    def frames(self, start: int, max_bytes: int, wait: float = 0.0) -> Frames: ...
    def objects(self, start: int, end: int) -> Iterator[tuple[str, int, Iterator[bytes]]]: ...  # (id, size, chunks)
    def packs(self) -> list[tuple[str, int]]: ...  # (name, size) of each installed pack (R13)
    def pack_file(self, file_name: str) -> Iterator[bytes]: ...  # the bytes of pack-<40 hex>.idx or .pack, in pieces
    def close(self) -> None: ...


# ============================================================ the serving side (a path source and the server share it)
def describe(root: Path) -> dict:
    """A store's description for a replica: its config bytes, store id, log end and token file."""
    try:
        config = (root / layout.CONFIG).read_bytes()
    except FileNotFoundError:
        raise NoStore(f"no store at {root} (no config file)") from None
    except OSError as exc:
        raise from_os_error(exc, f"reading the store at {root}") from None
    store_id = layout.parse_config(config, root / layout.CONFIG)["store_id"]
    try:
        tokens = (root / layout.TOKENS).read_bytes()
    except FileNotFoundError:
        tokens = None
    except OSError as exc:
        raise from_os_error(exc, "reading the token file") from None
    return {"store_id": store_id, "config": config, "log_end": Log(root / layout.LOG).end(), "tokens": tokens}


def read_frames(log: Log, start: int, max_bytes: int) -> bytes:
    """Whole frames from start: NoFrameThere unless a frame starts there (checked by its checksum alone).

    Nothing (b"") at the end of the log. A frame still being written there is waited for
    (its one write() takes microseconds); past _WRITE_WAIT it is a torn tail or no frame at all.
    """
    end = log.end()
    if start == end:
        return b""
    first = log.frame_end_at(start)
    deadline = time.monotonic() + _WRITE_WAIT
    while start < end and (first is None or first[0] > end) and time.monotonic() < deadline:
        time.sleep(0.002)
        end, first = log.end(), log.frame_end_at(start)
    if start > end or first is None or not start + HEADER_SIZE < first[0] <= min(end, start + HEADER_SIZE + MAX_FRAME):
        raise NoFrameThere(end)
    if log.check_frames(start, 1, end)[1] is not None:
        raise NoFrameThere(end)
    return log.raw(start, max_bytes)


def named_objects(log: Log, start: int, end: int) -> Iterator[tuple[str, int]]:
    """(id, size) of each object the records in [start, end) name, first mention first, each once."""
    seen: set[str] = set()
    for frame in log.scan(start, end):
        for record in frame.records:
            if record.op == "put" and record.hash not in seen:
                seen.add(record.hash)
                yield record.hash, record.size


def verified_objects(objects: ObjectStore, wanted: Iterable[tuple[str, int]]) -> Iterator[tuple[str, int, Iterator[bytes]]]:
    """(id, size, chunks) of each wanted object, hashed against its id before it is handed on.

    Objects in a pack are read with one pread each from a pack file kept open (a reader per
    object would open the pack 10,000 times for a clone); big and loose ones through their reader.
    A loose copy comes first, as for every read: repair writes one over a damaged pack entry (R12).
    """
    handles: dict[Path, int] = {}
    packs = objects.packs
    try:
        for object_id, _size in wanted:
            loose = os.path.exists(objects.loose_path(object_id))
            location = packs.locate(object_id) if packs is not None and not loose else None
            if location is None or location.length >= _STREAM_PIECE * 8:
                reader = objects.open(object_id)
                yield object_id, reader.size, reader.chunks()
                continue
            fd = handles.get(location.path)
            if fd is None:
                fd = handles[location.path] = os.open(location.path, os.O_RDONLY | os.O_CLOEXEC)
            data = os.pread(fd, location.length, location.offset)
            if len(data) != location.length or blake3(data).hexdigest() != object_id:
                raise CorruptObject(f"object {object_id} is damaged: its bytes do not hash to its name ({location.path})")
            yield object_id, len(data), iter((data,))
    except OSError as exc:
        raise from_os_error(exc, "reading objects to send") from None
    finally:
        for fd in handles.values():
            os.close(fd)


def object_stream(log: Log, objects: ObjectStore, start: int, end: int) -> Iterator[bytes]:
    """The object stream (module docstring) of the objects named in [start, end), in pieces of about 1 MiB.

    Each object is read through its verified reader: a damaged one raises after its
    last chunk, so the stream is cut and the receiver refuses it (it checks too).
    """
    if start > end or end > log.end():
        raise NoFrameThere(log.end())
    buffer = bytearray()
    for object_id, size, chunks in verified_objects(objects, named_objects(log, start, end)):
        buffer += OBJECT_ENTRY.pack(bytes.fromhex(object_id), size)
        for chunk in chunks:
            buffer += chunk
            if len(buffer) >= _STREAM_PIECE:
                yield bytes(buffer)
                buffer.clear()
    if buffer:
        yield bytes(buffer)


def pack_listing(root: Path) -> list[tuple[str, int]]:
    """(name, size) of each installed pack (its index is there: a pack without one is never read), by name."""
    directory = root / layout.PACKS
    try:
        names = set(os.listdir(directory))
        listing = [(name[:-4], os.stat(directory / f"{name[:-4]}.pack").st_size) for name in names
                   if PACK_FILE.fullmatch(name) and name.endswith(".idx") and f"{name[:-4]}.pack" in names]  # fmt: skip
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise from_os_error(exc, "listing packs") from None
    return sorted(listing)


def pack_file_path(root: Path, file_name: str) -> Path:
    """The path of a pack or pack index a replica asks for by name (nothing else can be named)."""
    if not PACK_FILE.fullmatch(file_name):
        raise NotFound(f"no pack file {file_name[:80]!r}")
    return root / layout.PACKS / file_name


def read_pieces(path: Path, piece: int = _STREAM_PIECE) -> Iterator[bytes]:
    try:
        with open(path, "rb", buffering=0) as handle:
            while chunk := handle.read(piece):
                yield chunk
    except FileNotFoundError:
        raise NotFound(f"no pack file {path.name}") from None
    except OSError as exc:
        raise from_os_error(exc, f"reading {path.name}") from None


def open_local(root: Path) -> tuple[Log, ObjectStore]:
    """The log and objects of the store at root, read without its index (a read-only backup disk works)."""
    return Log(root / layout.LOG), ObjectStore(root / layout.OBJECTS, packs=PackSet(root / layout.PACKS))


# ============================================================ sources
class PathSource:
    """A store directory as a source (a second disk, a USB disk): read with no lock and no index."""

    epoch = 0

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser().absolute()
        self.location = str(self.root)
        if not (self.root / layout.CONFIG).exists():
            raise NoStore(f"no store at {self.root} to copy from")
        self.log, self.store_objects = open_local(self.root)

    def describe(self) -> dict:
        return describe(self.root)

    def frames(self, start: int, max_bytes: int, wait: float = 0.0) -> Frames:
        deadline = time.monotonic() + min(wait, MAX_WAIT)
        while self.log.end() <= start and time.monotonic() < deadline:
            time.sleep(_POLL)  # a file has nothing to wait on; the size is the condition
        return Frames(read_frames(self.log, start, max_bytes), self.log.end())

    def objects(self, start: int, end: int) -> Iterator[tuple[str, int, Iterator[bytes]]]:
        self.store_objects.refresh()
        yield from verified_objects(self.store_objects, named_objects(self.log, start, end))

    def packs(self) -> list[tuple[str, int]]:
        return pack_listing(self.root)

    def pack_file(self, file_name: str) -> Iterator[bytes]:
        return read_pieces(pack_file_path(self.root, file_name))

    def close(self) -> None:
        if self.store_objects.packs is not None:
            self.store_objects.packs.close()


class HttpSource:
    """An `imstore serve` as a source, over its replication routes (GET /v1/replication...)."""

    def __init__(self, url: str, token: str | None, cacert: str | os.PathLike | None = None, node: str | None = None):
        self.base = url.rstrip("/")
        self.location = self.base
        self.token = token
        # A standby names itself: with a replicate token, each request for frames from an offset tells the
        # primary that everything before it is durable here (sync mode counts these acknowledgements).
        self.node = node
        self.epoch = 0
        self._context = ssl.create_default_context(cafile=os.fspath(cacert)) if cacert is not None else None

    def _open(self, path: str, query: dict | None = None, timeout: float = 60.0):
        url = self.base + path + ("?" + urlencode(query) if query else "")
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        if self.node is not None:
            headers[NODE_HEADER] = self.node
        headers[EPOCH_HEADER] = str(self.epoch)
        request = urllib.request.Request(url, headers=headers)
        try:
            return urllib.request.urlopen(request, timeout=timeout, context=self._context)  # noqa: S310 -- http(s) only
        except urllib.error.HTTPError as exc:
            body = exc.read()
            if exc.code == 416 and exc.headers.get(LOG_END_HEADER, "").isdigit():
                raise NoFrameThere(int(exc.headers[LOG_END_HEADER])) from None
            raise _error_from_answer(exc.code, body, self.base) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", exc)
            raise Unavailable(f"cannot reach {self.base}: {getattr(reason, 'strerror', None) or reason}") from None

    def describe(self) -> dict:
        with self._open("/v1/replication") as response:
            document = json.loads(response.read())
        try:
            tokens = document.get("tokens")
            return {
                "store_id": str(document["store_id"]),
                "config": base64.b64decode(document["config"]),
                "log_end": int(document["log_end"]),
                "tokens": base64.b64decode(tokens) if tokens is not None else None,
            }
        except (KeyError, TypeError, ValueError):
            raise BadUpstream(f"{self.base} sent a replication description that cannot be read") from None

    def frames(self, start: int, max_bytes: int, wait: float = 0.0) -> Frames:
        query = {"from": start, "max_bytes": max_bytes}
        if wait > 0:
            query["wait"] = str(round(min(wait, MAX_WAIT) + 0.499))  # whole seconds
        with self._open("/v1/replication/log", query, timeout=60.0 + wait) as response:
            try:
                data = response.read()
            except (OSError, http.client.HTTPException) as exc:
                raise Unavailable(f"the frames from {self.base} broke off: {exc}") from None
            end, seq = response.headers.get(LOG_END_HEADER, ""), response.headers.get(HEAD_SEQ_HEADER, "")
            epoch = response.headers.get(EPOCH_HEADER, "")
        if not end.isdigit():
            raise BadUpstream(f"{self.base} sent frames without saying where its log ends")
        return Frames(data, int(end), int(seq) if seq.isdigit() else None, int(epoch) if epoch.isdigit() else None)

    def objects(self, start: int, end: int) -> Iterator[tuple[str, int, Iterator[bytes]]]:
        with self._open("/v1/replication/objects", {"from": start, "to": end}) as response:
            yield from read_object_stream(response, self.base)

    def packs(self) -> list[tuple[str, int]]:
        with self._open("/v1/replication/packs") as response:
            document = json.loads(response.read())
        try:
            return [(str(pack["name"]), int(pack["size"])) for pack in document["packs"]]
        except (KeyError, TypeError, ValueError):
            raise BadUpstream(f"{self.base} sent a list of packs that cannot be read") from None

    def pack_file(self, file_name: str) -> Iterator[bytes]:
        with self._open(f"/v1/replication/packs/{file_name}", timeout=60.0) as response:
            buffer = bytearray(_STREAM_PIECE)
            try:
                while count := response.readinto(buffer):
                    yield memoryview(buffer)[:count]  # the same buffer each time: the caller is done with it first
            except (OSError, http.client.HTTPException) as exc:
                raise Unavailable(f"the pack {file_name} from {self.base} broke off: {exc}") from None

    def close(self) -> None:
        pass


def read_object_stream(response, where: str) -> Iterator[tuple[str, int, Iterator[bytes]]]:
    """Parse the object stream; each object's chunks must be read before the next is asked for."""

    def exactly(count: int) -> bytes:
        """count bytes, or fewer only at the end of the stream."""
        parts: list[bytes] = []
        try:
            while count > 0:
                part = response.read(count)
                if not part:
                    break
                parts.append(part)
                count -= len(part)
        except (OSError, http.client.HTTPException) as exc:
            raise Unavailable(f"the objects from {where} broke off: {exc}") from None
        return b"".join(parts)

    while True:
        head = exactly(OBJECT_ENTRY.size)
        if not head:
            return
        if len(head) < OBJECT_ENTRY.size:
            raise BadUpstream(f"the object stream from {where} ends inside an entry")
        raw_id, size = OBJECT_ENTRY.unpack(head)

        def chunks(remaining: int = size) -> Iterator[bytes]:
            while remaining > 0:
                chunk = exactly(min(CHUNK_SIZE, remaining))
                if not chunk:
                    raise BadUpstream(f"the object stream from {where} ends inside an object")
                remaining -= len(chunk)
                yield chunk

        yield raw_id.hex(), size, chunks()


def _error_from_answer(status: int, body: bytes, where: str) -> ImstoreError:
    """The error a server's problem document names (the core cannot use server/protocol.py: no server imports here)."""
    try:
        document = json.loads(body)
        name, detail = document.get("error"), document.get("detail") or document.get("title")
    except (ValueError, AttributeError):
        name, detail = None, None
    cls = getattr(errors, name, None) if isinstance(name, str) else None
    if not (isinstance(cls, type) and issubclass(cls, ImstoreError)):
        known = {401: errors.NotAuthorised, 403: errors.Forbidden, 404: errors.NotFound}
        cls = known.get(status, Unavailable if status >= 500 else ImstoreError)
    return cls(f"{where}: {detail or f'HTTP {status}'}")


def open_source(location: str, token: str | None = None, cacert: str | os.PathLike | None = None) -> Source:
    """A source from what the user typed: an http(s) URL or a store path."""
    if location.startswith(("http://", "https://")):
        return HttpSource(location, token, cacert)
    return PathSource(location)
