"""Commands on keys and their history: init, put, get, cat, history, ls, rm, log, verify, reindex."""

# No `from __future__ import annotations` (see __init__.py): typer would eval the strings on each start.
import sys
from pathlib import Path
from typing import Annotated

import typer

from ..errors import UsageError
from ..store import Store
from ..validate import MAX_NUMBER, parse_time
from . import settings
from .common import (
    PROGRESS_MIN_BYTES,
    check_output_file,
    chunks_with_progress,
    default_store_path,
    emit_object,
    open_input,
    open_store,
    parse_meta,
    parse_size,
    refuse_remote,
    run_batch,
    show_warnings,
)
from .output import history_json, log_json, ls_json, version_json


def init(
    path: Annotated[
        Path | None, typer.Argument(help="Where to create the store (default: --store or the default store).", show_default=False)
    ] = None,
) -> None:
    """Create a store. Refuses a non-empty directory that is not a store.

    Example: imstore init ~/stores/team
    """
    refuse_remote("init")
    target = path or settings.store or default_store_path()
    store, created = Store.init(target)
    with store:
        out = settings.out
        if out.json:
            out.document({"path": str(store.root), "store_id": store.store_id, "created": created})
        else:
            out.info(f"{'created a store' if created else 'already a store'} at {store.root}")


def put(
    key: Annotated[str, typer.Argument(help="The key (any UTF-8 text; '/' means nothing special).")],
    file: Annotated[str | None, typer.Argument(help="File to store, or - for stdin (default: stdin).", show_default=False)] = None,
    content_type: Annotated[str | None, typer.Option("--content-type", "-t", help="Media type to record, e.g. text/plain.")] = None,
    meta: Annotated[list[str] | None, typer.Option("--meta", help="Metadata NAME=VALUE (repeatable).")] = None,
    message: Annotated[str | None, typer.Option("-m", "--message", help="A message for this version.")] = None,
    if_version: Annotated[
        str | None, typer.Option("--if-version", help="Only if the latest version is N (0: no versions).", metavar="N")
    ] = None,
    if_absent: Annotated[bool, typer.Option("--if-absent", help="Only if the key has no live version.")] = False,
    max_size: Annotated[
        str | None,
        typer.Option("--max-size", envvar="IMSTORE_MAX_SIZE", help="Refuse content larger than this, e.g. 10G.", metavar="SIZE"),
    ] = None,
) -> None:
    """Store a new version of KEY from FILE or stdin (streamed).

    Prints key, version, hash, size and `new` or `unchanged` (same bytes, type
    and metadata as the latest version add no version).

    Example: imstore put notes/todo.txt todo.txt -m "first draft"

    Example: echo hello | imstore put greeting --if-absent
    """
    from ..sources import regular_file_size  # sources loads tarfile and lzma: 5 ms that get would pay

    limit = parse_size(max_size) if max_size is not None else None
    source = open_input(file, bounded=limit is not None)
    size = regular_file_size(source) or 0
    try:
        with open_store(write=True) as store, settings.out.progress(f"put {key}", size, unit_bytes=True) as progress:
            chunks = chunks_with_progress(source, progress) if size >= PROGRESS_MIN_BYTES else source
            result = store.put_stream(
                key,
                chunks,
                content_type=content_type,
                meta=parse_meta(meta),
                message=message,
                if_version=if_version,
                if_absent=if_absent,
                max_size=limit,
            )
            show_warnings(store)
    finally:
        if source is not sys.stdin.buffer:
            source.close()
    settings.out.put_result(result)


def get(
    key: Annotated[str | None, typer.Argument(metavar="KEY", help="The key (none with --batch).", show_default=False)] = None,
    version: Annotated[str | None, typer.Option("--version", "-V", help="Version number to read (default: latest).", metavar="N")] = None,
    at: Annotated[
        str | None, typer.Option("--at", help="The version current at this ISO 8601 time (no offset = UTC).", metavar="TIME")
    ] = None,
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Write to this file (atomically) instead of stdout.")] = None,
    batch: Annotated[
        bool, typer.Option("--batch", help="Read KEY or KEY<TAB>VERSION lines on stdin; answer each: a header line, the bytes, a newline.")
    ] = False,
    batch_check: Annotated[bool, typer.Option("--batch-check", help="Like --batch, header lines only (with --json: JSON lines).")] = False,
) -> None:
    """Write the bytes of KEY (latest, --version N, or --at TIME) to stdout or -o FILE.

    Bytes are checked against their hash before they are written; a damaged
    object is exit 5 and nothing reaches stdout.

    With --batch, one store serves many reads: each stdin line is KEY or
    KEY<TAB>VERSION, each answer is `KEY<TAB>VERSION<TAB>HASH<TAB>SIZE`, then
    SIZE bytes and a newline (as git cat-file --batch), or `KEY<TAB>missing` /
    `KEY<TAB>deleted`. Answers are flushed one by one.

    Example: imstore get notes/todo.txt --version 1 -o old.txt

    Example: printf 'notes/todo.txt\\nnotes/old.txt\\t1\\n' | imstore get --batch
    """
    if batch or batch_check:
        if key is not None or version is not None or at is not None or output is not None:
            raise UsageError("--batch reads its requests from stdin: give no KEY, --version, --at or -o")
        run_batch("get", batch_check)
        return
    if key is None:
        raise UsageError("give a KEY (or --batch to read keys from stdin)")
    if version is not None and at is not None:
        raise UsageError("give --version or --at, not both")
    moment = parse_time(at) if at is not None else None
    if output is not None and str(output) != "-":
        check_output_file(output)
    with open_store() as store:
        found, reader = store.open_version(key, version, moment)
        show_warnings(store)
        emit_object(reader, output)


def cat(
    object_hash: Annotated[
        str | None, typer.Argument(metavar="HASH", help="Full hash or a unique prefix of 8+ hex digits (none with --batch).")
    ] = None,
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Write to this file instead of stdout.")] = None,
    batch: Annotated[
        bool, typer.Option("--batch", help="Read a hash or prefix a line on stdin; answer each: a header line, the bytes, a newline.")
    ] = False,
    batch_check: Annotated[bool, typer.Option("--batch-check", help="Like --batch, header lines only (with --json: JSON lines).")] = False,
) -> None:
    """Write the bytes of an object, by hash or unique hash prefix.

    With --batch, each stdin line is a hash or prefix, each answer is
    `HASH<TAB>SIZE`, then SIZE bytes and a newline, or `QUERY<TAB>missing` /
    `QUERY<TAB>ambiguous`.

    Example: imstore cat 1f9a3b2c
    """
    if batch or batch_check:
        if object_hash is not None or output is not None:
            raise UsageError("--batch reads its requests from stdin: give no HASH or -o")
        run_batch("cat", batch_check)
        return
    if object_hash is None:
        raise UsageError("give a HASH (or --batch to read hashes from stdin)")
    if output is not None and str(output) != "-":
        check_output_file(output)
    with open_store() as store:
        reader = store.open_object(object_hash)
        show_warnings(store)
        emit_object(reader, output)


def history(
    key: Annotated[str, typer.Argument(help="The key.")],
    limit: Annotated[int | None, typer.Option("--limit", "-n", min=1, max=MAX_NUMBER, help="Only the newest N versions.")] = None,
) -> None:
    """Every version of KEY, oldest first: version, time, op, hash, size, type, message.

    Example: imstore history notes/todo.txt --limit 5
    """
    with open_store() as store:
        versions = store.history(key, limit)
        show_warnings(store)
    out = settings.out
    if out.json:
        out.document([history_json(v) for v in versions])
        return
    out.rows(
        ["version", "time", "op", "hash", "size", "type", "message"],
        [[v.version, v.time, v.op, v.hash, v.size, v.content_type, v.message] for v in versions],
    )


def list_keys(
    prefix: Annotated[str, typer.Argument(help="Only keys starting with this text.")] = "",
    show_all: Annotated[bool, typer.Option("--all", "-a", help="Include deleted keys.")] = False,
    limit: Annotated[int | None, typer.Option("--limit", "-n", min=1, max=MAX_NUMBER, help="At most N keys.")] = None,
) -> None:
    """Keys with their latest version: key, version, hash, size, time.

    Example: imstore ls notes/
    """
    with open_store() as store:
        versions = store.ls(prefix, include_deleted=show_all, limit=limit)
        show_warnings(store)
    out = settings.out
    if out.json:
        out.document([ls_json(v) for v in versions])
        return
    out.rows(
        ["key", "version", "hash", "size", "time"],
        [[v.key, v.version, "(deleted)" if v.deleted else v.hash, v.size, v.time] for v in versions],
    )


def rm(
    key: Annotated[str, typer.Argument(help="The key.")],
    message: Annotated[str | None, typer.Option("-m", "--message", help="A message for the deletion.")] = None,
    if_version: Annotated[str | None, typer.Option("--if-version", help="Only if the latest version is N.", metavar="N")] = None,
) -> None:
    """Delete KEY by appending a tombstone version; history keeps every version.

    Example: imstore rm notes/todo.txt -m "done"
    """
    with open_store(write=False) as store:
        tombstone = store.delete(key, message=message, if_version=if_version)
        show_warnings(store)
    out = settings.out
    if out.json:
        out.document(version_json(tombstone))
    elif not out.quiet:
        out.line(tombstone.key, tombstone.version, "deleted")


def log(
    after: Annotated[int, typer.Option("--after", min=0, max=MAX_NUMBER, help="Only records after this seq.", metavar="SEQ")] = 0,
    limit: Annotated[int | None, typer.Option("--limit", "-n", min=1, max=MAX_NUMBER, help="At most N records.")] = None,
) -> None:
    """The global log of every put and delete in commit order: seq, op, key, version, hash, size, time.

    Example: imstore log --after 100 --limit 20
    """
    with open_store() as store:
        records = store.log_records(after, limit)
        show_warnings(store)
    out = settings.out
    if out.json:
        out.document([log_json(r) for r in records])
        return
    out.rows(
        ["seq", "op", "key", "version", "hash", "size", "time"],
        [[r.seq, r.op, r.key, r.version, r.hash, r.size, r.time] for r in records],
    )


def verify(
    since: Annotated[
        Path | None, typer.Option("--since", help="Only prove that the log extends this old checkpoint.", metavar="FILE")
    ] = None,
    key: Annotated[str | None, typer.Option("--key", help="Check --since's checkpoints with this verifier key.", metavar="VKEY")] = None,
) -> None:
    """Check the hash chain, every record, every object's hash, and the index against the log.

    Exit 5 names each problem; temp files and unreferenced objects are notes.
    With --since FILE, check instead that the log still extends the checkpoint
    in FILE (nothing cut, rolled back or rewritten since): exit 5 if not.

    Example: imstore verify --json

    Example: imstore verify --since monday.checkpoint
    """
    if since is not None:
        from .proofs import verify_since

        return verify_since(since, key)
    if key is not None:
        raise UsageError("--key goes with --since")
    with open_store() as store, settings.out.progress("verifying objects") as progress:
        report = store.verify(progress=progress.update)
        show_warnings(store)
    settings.out.verify_report(report)
    if not report.ok:
        raise typer.Exit(5)


def reindex() -> None:
    """Rebuild the index from the log (the log is the truth; the index is derived).

    Example: imstore reindex
    """
    with open_store() as store:
        count = store.reindex()
        show_warnings(store)
    out = settings.out
    if out.json:
        out.document({"records": count})
    else:
        out.info(f"index rebuilt: {count} records")

