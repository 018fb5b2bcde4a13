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
PROOFS_DIR = ".imstore-proofs"  # inside a directory export: checkpoint, key, and <key>.proof for each file


def key() -> None:
    """Print the verifier key of the store's checkpoint signing key (made on first use).

    Hand it to whoever will check your proofs; the private key never leaves the store.

    Example: imstore key > store.vkey
    """
    with open_store(reads_objects=False) as store:
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
    with open_store(reads_objects=False) as store:
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
    from ..proofs import render

    if (key is None) == (since is None):
        raise UsageError("give a KEY to prove, or --since FILE, not both")
    if version is not None and at is not None:
        raise UsageError("give --version or --at, not both")
    if since is not None and (version is not None or at is not None):
        raise UsageError("--version and --at go with a KEY, not with --since")
    old = read_text(since) if since is not None else None
    moment = parse_time(at) if at is not None else None
    with open_store(reads_objects=False) as store:
        document = store.prove_since(old) if old is not None else store.prove(key, version, moment)
        if settings.remote:  # a server's proof is checked with the pinned key before it is passed on
            from ..checkpoint import Verifier
            from ..proofcheck import check_document

            check_document(render(document), Verifier.parse(store.verifier_key()))
        show_warnings(store)
    text = render(document)
    if output is not None and str(output) != "-":
        output.write_text(text, "ascii")
    else:
        settings.out.stdout.write(text)


def check_proof(
    file: Annotated[str, typer.Argument(help="The proof document, - for stdin, or a directory made by export --proofs.", metavar="FILE")],
    key: Annotated[str, typer.Option("--key", help=KEY_HELP, metavar="VKEY")],
    content: Annotated[
        Path | None, typer.Option("--content", help="Also check that this file holds the proven version's bytes.", metavar="PATH")
    ] = None,
) -> None:
    """Check a proof document offline: no store and no network are used.

    The checkpoint's signature is checked first, then the proof against its root.
    For an inclusion proof it prints what the proven record says: key, version,
    hash and time; --content also checks a file's bytes against that hash. Given
    a directory exported with --proofs, it checks every file in it against its
    proof. Any failure is exit 5 and says what failed.

    Example: imstore check-proof todo.proof --key "$(cat store.vkey)" --content todo.txt

    Example: imstore check-proof ./handover --key "$(cat store.vkey)"
    """
    from ..checkpoint import Verifier
    from ..proofcheck import check_document

    verifier = Verifier.parse(key)
    if file != "-" and Path(file).is_dir():
        if content is not None:
            raise UsageError("--content goes with one proof file; a directory's proofs name their files")
        return check_bundle(Path(file), verifier)
    proven = check_document(sys.stdin.read() if file == "-" else read_text(Path(file)), verifier)
    if content is not None:
        check_content(proven.record, content)
    show_proven(proven)


def check_content(record, path: Path) -> None:
    """The file at path must hold the proven version's bytes (BLAKE3 and size)."""
    from ..errors import ProofFailed
    from ..hashing import blake3

    if record is None:
        raise UsageError("--content goes with an inclusion proof")
    if record.op != "put":
        raise ProofFailed(f"the proven version of {record.key!r} is a deletion: it has no content to compare")
    hasher, size = blake3(), 0
    try:
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 20):
                hasher.update(chunk)
                size += len(chunk)
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc.strerror or exc}") from None
    if (hasher.hexdigest(), size) != (record.hash, record.size):
        raise ProofFailed(f"{path} does not hold the proven version of {record.key!r} (its BLAKE3 is {hasher.hexdigest()},"
                          f" the proof names {record.hash})")  # fmt: skip


def check_bundle(directory: Path, verifier) -> None:
    """Every `<key>.proof` under directory/PROOFS_DIR checked, its file against the proven hash, and no file without one."""
    from ..errors import ProofFailed
    from ..proofcheck import check_document

    proofs_root = directory / PROOFS_DIR
    documents = sorted(proofs_root.rglob("*.proof")) if proofs_root.is_dir() else []
    if not documents:
        raise InvalidInput(f"{directory} holds no {PROOFS_DIR}/ with proofs (export with --proofs makes them)")
    checked = []
    for document in documents:
        proven = check_document(read_text(document), verifier)
        if proven.record is None:
            raise UsageError(f"{document} is not an inclusion proof")
        check_content(proven.record, directory / proven.record.key)
        checked.append(proven.record)
    proven_files = {directory / record.key for record in checked}
    files = (path for path in sorted(directory.rglob("*")) if path.is_file() and proofs_root not in path.parents)
    unproven = [path for path in files if path not in proven_files]
    if unproven:
        raise ProofFailed(f"{len(unproven)} files in {directory} have no proof, e.g. {unproven[0].relative_to(directory)}")
    out = settings.out
    if out.json:
        out.document({"ok": True, "checked": [{"key": r.key, "version": r.version, "hash": r.hash} for r in checked]})
    else:
        for record in checked:
            out.line(record.key, record.version, record.hash, format_time(record.time_ns))
        out.info(f"proven: all {len(checked)} files in {directory} are the versions their proofs name")


def write_export_proofs(store, directory: Path, versions) -> list[str]:
    """export --proofs: a proof of each exported version, the checkpoint and the verifier key, in directory/PROOFS_DIR."""
    from ..proofs import render

    root = directory / PROOFS_DIR
    warnings = []
    try:
        root.mkdir(exist_ok=True)
        (root / "key").write_text(store.verifier_key() + "\n", "ascii")
        (root / "checkpoint").write_text(store.checkpoint(), "utf-8")
        for version in versions:
            if version.key == PROOFS_DIR or version.key.startswith(PROOFS_DIR + "/"):
                warnings.append(f"key {version.key!r} lies where the proofs go ({PROOFS_DIR}/): no proof written for it")
                continue
            target = root / (version.key + ".proof")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(render(store.prove(version.key, version.version)), "ascii")
    except OSError as exc:
        raise InvalidInput(f"cannot write the proofs in {root}: {exc.strerror or exc}") from None
    return warnings


def verify_since(since: Path, key: str | None) -> None:
    """`imstore verify --since FILE`: the store's log still extends the checkpoint in FILE, or exit 5."""
    from ..checkpoint import Verifier
    from ..proofcheck import check_document
    from ..proofs import render

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
