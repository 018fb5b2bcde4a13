"""Proofs anyone can check: key, checkpoint, prove, check-proof, and verify --since (docs/DESIGN.md P1-P6)."""

# No `from __future__ import annotations` (see __init__.py): typer would eval the strings on each start.
import sys
from pathlib import Path
from typing import Annotated

import typer

from ..errors import InvalidInput, UsageError
from ..validate import format_time, parse_time
from . import settings
from .common import open_store, show_warnings

KEY_HELP = "The store's verifier key, as `imstore key` prints it (NAME+ID+KEY)."


def key() -> None:
    """Print the verifier key of the store's checkpoint signing key (made on first use).

    Hand it to whoever will check your proofs; the private key never leaves the store.

    Example: imstore key > store.vkey
    """
    with open_store() as store:
        verifier = store.verifier_key()
        show_warnings(store)
    out = settings.out
    if out.json:
        out.document({"key": verifier})
    else:
        out.stdout.write(verifier + "\n")


def checkpoint() -> None:
    """Print a signed checkpoint of the log as it is now (C2SP tlog-checkpoint, signed note).

    Keep it: `imstore verify --since FILE` later proves the log only grew since.

    Example: imstore checkpoint > monday.checkpoint
    """
    with open_store() as store:
        note = store.checkpoint()
        show_warnings(store)
    out = settings.out
    if out.json:
        origin, size, root = note.split("\n")[:3]
        out.document({"checkpoint": note, "origin": origin, "size": int(size), "root": root})
    else:
        out.stdout.write(note)


def prove(
    key: Annotated[str | None, typer.Argument(help="The key whose version to prove.", metavar="KEY", show_default=False)] = None,
    version: Annotated[str | None, typer.Option("--version", "-V", help="Version number (default: latest).", metavar="N")] = None,
    at: Annotated[str | None, typer.Option("--at", help="The version current at this ISO 8601 time.", metavar="TIME")] = None,
    since: Annotated[
        Path | None, typer.Option("--since", help="Prove instead that the log extends this old checkpoint.", metavar="FILE")
    ] = None,
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Write the proof to this file instead of stdout.")] = None,
) -> None:
    """Print a proof document (JSON) that anyone can check offline with `imstore check-proof`.

    With KEY: an inclusion proof of that version (latest, --version N or --at TIME)
    in a signed checkpoint. With --since FILE: a consistency proof that the log
    of the checkpoint in FILE is a prefix of the log now (exit 5 if it is not).

    Example: imstore prove notes/todo.txt --version 2 -o todo.proof

    Example: imstore prove --since monday.checkpoint -o week.proof
    """
    from ..checkpoint import Verifier
    from ..proofs import check_document, render

    if (key is None) == (since is None):
        raise UsageError("give a KEY to prove, or --since FILE, not both")
    if version is not None and at is not None:
        raise UsageError("give --version or --at, not both")
    if since is not None and (version is not None or at is not None):
        raise UsageError("--version and --at go with a KEY, not with --since")
    old = read_text(since) if since is not None else None
    moment = parse_time(at) if at is not None else None
    with open_store() as store:
        document = store.prove_since(old) if old is not None else store.prove(key, version, moment)
        if settings.remote:  # a server's proof is checked with the pinned key before it is passed on
            check_document(render(document), Verifier.parse(store.verifier_key()))
        show_warnings(store)
    text = render(document)
    if output is not None and str(output) != "-":
        output.write_text(text, "ascii")
    else:
        settings.out.stdout.write(text)


def check_proof(
    file: Annotated[str, typer.Argument(help="The proof document, or - for stdin.", metavar="FILE")],
    key: Annotated[str, typer.Option("--key", help=KEY_HELP, metavar="VKEY")],
) -> None:
    """Check a proof document offline: no store and no network are used.

    The checkpoint's signature is checked first, then the proof against its root.
    For an inclusion proof it prints what the proven record says: key, version,
    hash and time. Any failure is exit 5 and says what failed.

    Example: imstore check-proof todo.proof --key "$(cat store.vkey)"
    """
    from ..checkpoint import Verifier
    from ..proofs import check_document

    verifier = Verifier.parse(key)
    proven = check_document(sys.stdin.read() if file == "-" else read_text(Path(file)), verifier)
    show_proven(proven)


def verify_since(since: Path, key: str | None) -> None:
    """`imstore verify --since FILE`: the store's log still extends the checkpoint in FILE, or exit 5."""
    from ..checkpoint import Verifier
    from ..proofs import check_document, render

    old = read_text(since)
    with open_store() as store:
        verifier = Verifier.parse(key if key is not None else store.verifier_key())
        document = store.prove_since(old)
        show_warnings(store)
    show_proven(check_document(render(document), verifier))


def show_proven(proven) -> None:
    out = settings.out
    signed = proven.checkpoint
    tree = {"origin": signed.origin, "size": signed.size, "root": signed.note.split("\n")[2]}
    record = proven.record
    if out.json:
        if record is not None:
            fields = {"key": record.key, "version": record.version, "op": record.op, "hash": record.hash, "size": record.size,
                      "time": format_time(record.time_ns), "seq": record.seq}  # fmt: skip
            out.document({"ok": True, "proof": "inclusion", "record": fields, "checkpoint": tree})
        else:
            out.document({"ok": True, "proof": "consistency", "old_size": proven.old.size, "checkpoint": tree})
        return
    if record is not None:
        what = "deleted" if record.op == "delete" else f"hash {record.hash}, {record.size} bytes"
        out.line(record.key, record.version, record.hash or "-", format_time(record.time_ns))
        out.info(f"proven: {record.key!r} version {record.version} ({what}, {format_time(record.time_ns)}) is record {record.seq}"
                 f" of the log {signed.origin} as signed at {signed.size} records")  # fmt: skip
    else:
        out.info(f"proven: the log {signed.origin} at {signed.size} records extends the checkpoint at {proven.old.size} records")


def read_text(path: Path) -> str:
    try:
        return path.read_text("utf-8")
    except FileNotFoundError:
        raise InvalidInput(f"no such file: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
