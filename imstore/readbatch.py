"""Batch reads for scripts (`imstore get --batch`, `imstore cat --batch`): one request a line, one answer each.

Answers are framed as `git cat-file --batch` frames them, so a script reads a
header line, then exactly SIZE bytes and a newline:

    get:  KEY<TAB>VERSION<TAB>HASH<TAB>SIZE      cat:  HASH<TAB>SIZE
          KEY<TAB>missing / KEY<TAB>deleted            QUERY<TAB>missing / QUERY<TAB>ambiguous

Keys never hold a tab or a newline, so the header splits without quoting. A
request that names nothing that can exist (an empty line, a malformed key,
version or hash) is `missing`, as git answers a name it cannot parse. Damage is
never an answer: the batch stops with the error (exit 5) before any byte of a
damaged object is written. Bytes are verified before their header is written
(objects up to WHOLE bytes are read whole; larger ones are verified, then
streamed and checked again).

The store is opened once; each line is answered from the log as it is then
(a local Store catches its index up when the log has grown), so a key written
by another process is seen by the next line. Every answer is flushed, so a
script can write a line and wait for its answer.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterable, Iterator
from typing import BinaryIO, NamedTuple

from .errors import AmbiguousPrefix, KeyDeleted, NotFound, UsageError

__all__ = ["Answer", "answer_get", "answer_cat", "write_answer", "serve_lines", "parse_get_line", "WHOLE"]

WHOLE = 16 << 20  # objects up to this size are read (and verified) in memory before their header goes out
OK, MISSING, DELETED, AMBIGUOUS = "ok", "missing", "deleted", "ambiguous"


class Answer(NamedTuple):
    """The answer to one line: status OK with what was found, or why not."""

    query: str
    status: str
    number: int = 0  # the version number (get)
    object_id: str = ""
    size: int = 0
    content_type: str | None = None
    data: bytes | None = None  # the verified bytes, when read whole
    reader: object | None = None  # a reader (chunks()) of bytes verified once, streamed after the header


def parse_get_line(line: str) -> tuple[str, str | None]:
    """`KEY` or `KEY<TAB>VERSION`."""
    key, tab, version = line.partition("\t")
    return key, (version if tab else None)


def answer_get(store, line: str, *, with_bytes: bool) -> Answer:
    key, version = parse_get_line(line)
    try:
        found, reader = store.open_version(key, version)
    except KeyDeleted:
        return Answer(key, DELETED)
    except (NotFound, UsageError):  # no such key or version, or one that cannot exist
        return Answer(key, MISSING)
    return _with_bytes(Answer(key, OK, found.version, found.hash, found.size, found.content_type, None, reader), with_bytes)


def answer_cat(store, line: str, *, with_bytes: bool) -> Answer:
    try:
        reader = store.open_object(line)
    except AmbiguousPrefix:
        return Answer(line, AMBIGUOUS)
    except (NotFound, UsageError):
        return Answer(line, MISSING)
    return _with_bytes(Answer(line, OK, 0, reader.object_id, reader.size, None, None, reader), with_bytes)


def _with_bytes(answer: Answer, with_bytes: bool) -> Answer:
    """Verify the bytes now, before the header is written: damage must stop the batch, not follow a header."""
    reader = answer.reader
    if not with_bytes:
        if hasattr(reader, "close"):
            reader.close()  # a remote reader holds its response open
        return answer._replace(reader=None)
    if answer.size <= WHOLE:
        return answer._replace(data=reader.read(), reader=None)
    reader.verify()
    return answer


def header(answer: Answer, kind: str) -> bytes:
    if answer.status != OK:
        text = f"{answer.query}\t{answer.status}"
    elif kind == "get":
        text = f"{answer.query}\t{answer.number}\t{answer.object_id}\t{answer.size}"
    else:
        text = f"{answer.object_id}\t{answer.size}"
    return text.encode("utf-8", "surrogateescape") + b"\n"


def json_line(answer: Answer, kind: str) -> bytes:
    """The same facts as the header line, as JSON (and, for get, the Content-Type a reader gets)."""
    name = "key" if kind == "get" else "query"
    document: dict = {name: answer.query, "status": answer.status}
    if answer.status == OK:
        if kind == "get":
            # The type a reader gets, as over HTTP: application/octet-stream when none was recorded.
            content_type = answer.content_type or "application/octet-stream"
            document.update(version=answer.number, hash=answer.object_id, size=answer.size, content_type=content_type)
        else:
            document.update(hash=answer.object_id, size=answer.size)
    return json.dumps(document, ensure_ascii=False).encode("utf-8", "surrogateescape") + b"\n"


def write_answer(answer: Answer, kind: str, mode: str, out: BinaryIO) -> None:
    """One answer in mode "batch" (header, bytes, newline), "check" (header) or "json" (a JSON line); flushed."""
    if mode == "json":
        out.write(json_line(answer, kind))
    else:
        out.write(header(answer, kind))
        if mode == "batch" and answer.status == OK:
            if answer.data is not None:
                out.write(answer.data)
            else:
                for chunk in answer.reader.chunks():  # checked again on the way: damage now cuts the frame short
                    out.write(chunk)
            out.write(b"\n")
    out.flush()


def read_lines(source: BinaryIO) -> Iterator[str]:
    """The source's lines, without their newline, as soon as each arrives.

    A real file descriptor is read with os.read: no buffered reader's lock is held while
    waiting, so a thread blocked here (a remote batch's input) never stalls the exit."""
    try:
        fd = source.fileno()
    except (AttributeError, OSError, io.UnsupportedOperation):
        fd = None
    if fd is None:
        while raw := source.readline():
            yield _decode(raw[:-1] if raw.endswith(b"\n") else raw)
        return
    pending = b""
    while chunk := os.read(fd, 1 << 16):
        *complete, pending = (pending + chunk).split(b"\n")
        for raw in complete:
            yield _decode(raw)
    if pending:
        yield _decode(pending)


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")  # a key that is not UTF-8 is answered missing, echoed as it came


def serve_lines(store, lines: Iterable[str], kind: str, mode: str, out: BinaryIO, after_each=None) -> int:
    """Answer every line with a store, in order; returns how many were answered.

    A store with its own `answer_lines` (RemoteStore: pipelined on one connection) answers them itself."""
    answers = getattr(store, "answer_lines", None)
    if answers is not None:
        stream = answers(lines, kind, with_bytes=mode == "batch")
    else:
        ask = answer_get if kind == "get" else answer_cat
        stream = (ask(store, line, with_bytes=mode == "batch") for line in lines)
    count = 0
    for answer in stream:
        write_answer(answer, kind, mode, out)
        if after_each is not None:
            after_each()
        count += 1
    return count
