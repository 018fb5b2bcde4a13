"""Batch commands: import, export, repack."""

# No `from __future__ import annotations` (see __init__.py): typer would eval the strings on each start.
import sys
from pathlib import Path
from typing import Annotated

import typer

from ..errors import ImstoreError, UsageError
from ..exporter import export as export_keys
from ..exporter import tar_mode
from ..importer import import_source
from ..validate import parse_time
from . import settings
from .common import check_output_directory, check_output_file, open_local_store, open_store, show_warnings
from .proofs import PROOFS_DIR, write_export_proofs

# Archive names a user may well type that export cannot write: refused rather than made a directory.
ARCHIVE_SUFFIXES_WE_DO_NOT_WRITE = frozenset({".zip", ".7z", ".rar", ".gz", ".bz2", ".xz", ".zst", ".tzst", ".tbz2", ".txz"})


def import_(
    source: Annotated[str, typer.Argument(help="A directory, a tar (any compression), a .jsonl/.ndjson file, or - for stdin.")],
    prefix: Annotated[str, typer.Option("--prefix", "-p", help="Prepend this to every key, as given (no '/' is added).")] = "",
    jobs: Annotated[
        int | None, typer.Option("--jobs", "-j", min=1, help="Reader threads (default: the CPU count; not used with --remote).")
    ] = None,
    message: Annotated[str | None, typer.Option("-m", "--message", help="A message for every version of this import.")] = None,
    skip_errors: Annotated[bool, typer.Option("--skip-errors", help="Warn about bad items and import the rest.")] = False,
    follow_symlinks: Annotated[bool, typer.Option("--follow-symlinks", help="Follow symlinks that stay inside SOURCE.")] = False,
) -> None:
    """Import a tree, a tar or JSON lines as one atomic batch (all of it or none of it).

    Directory keys are relative paths with '/'; tar member names lose a leading
    './'; JSON lines give {"key", "content" | "content_b64" | "path"} and optional
    "content_type", "meta", "message". Unchanged files add no version. Prints a
    summary: added, unchanged, skipped, bytes written, bytes saved by dedup.

    Example: imstore import ./photos --prefix photos/ -m "March"

    Example: tar -cz docs | imstore import - --prefix docs/

    With --remote the whole SOURCE is one streamed request and still one
    atomic batch on the server: a directory is sent as a tar made on the fly,
    a tar or JSON lines as they are ("path" lines are sent inline).

    Example: imstore --remote http://nas:8765 import ./photos --prefix photos/
    """
    out = settings.out
    if source == "-" and sys.stdin is not None and sys.stdin.isatty():
        raise UsageError("stdin is a terminal: pipe a tar or JSON lines in (e.g. tar -c DIR | imstore import -)")
    with open_store(write=True) as store, out.progress("importing", unit_bytes=True) as bar:

        def progress(files: int, done: int, total_files: int | None, total_bytes: int | None) -> None:
            bar.update(done, total_bytes, label=f"importing {files}/{total_files} files" if total_files else f"importing {files} files")

        def sent(done: int, total: int | None) -> None:
            bar.update(min(done, total) if total else done, total, label="uploading")

        options = {
            "stdin": sys.stdin.buffer if source == "-" and sys.stdin is not None else None,
            "prefix": prefix,
            "jobs": jobs,
            "message": message,
            "skip_errors": skip_errors,
            "follow_symlinks": follow_symlinks,
        }
        if settings.remote:
            summary = store.import_source(source, **options, progress=sent if bar.live else None)
        else:
            summary = import_source(store, source, **options, progress=progress if bar.live else None)
        show_warnings(store)
    for warning in summary.warnings:
        out.warn(warning)
    if out.json:
        out.document(summary.to_json())
    elif not out.quiet:
        out.line(
            f"added {summary.added}", f"unchanged {summary.unchanged}", f"skipped {summary.skipped}",
            f"written {summary.bytes_written} bytes", f"saved {summary.bytes_saved} bytes by dedup",
        )  # fmt: skip


def export(
    dest: Annotated[str, typer.Argument(help="A directory, a .tar/.tar.gz/.tgz/.tar.bz2/.tar.xz file, or - for a tar on stdout.")],
    prefix: Annotated[str, typer.Option("--prefix", "-p", help="Only keys starting with this text.")] = "",
    at: Annotated[str | None, typer.Option("--at", help="Versions current at TIME (ISO 8601; no offset = UTC).", metavar="TIME")] = None,
    strict: Annotated[bool, typer.Option("--strict", help="Exit 1 when a key cannot be exported as a path.")] = False,
    proofs: Annotated[
        bool, typer.Option("--proofs", help=f"Also write a proof of each file, the checkpoint and the verifier key in DEST/{PROOFS_DIR}.")
    ] = False,
) -> None:
    """Write the latest (or --at TIME) version of each live key to a directory or a tar.

    Keys that cannot be a safe path inside DEST (a leading '/', an empty, '.' or
    '..' segment, a NUL) are skipped with a warning naming each; nothing is ever
    written outside DEST. Every byte is checked against its hash first.

    Example: imstore export backup.tar.gz --prefix photos/

    Example: imstore export - --at 2026-11-01 | tar -tv

    Example: imstore export ./handover --prefix contracts/ --proofs
    """
    moment = parse_time(at) if at is not None else None
    out = settings.out
    if dest == "-" and out.stdout_is_terminal:
        raise UsageError("refusing to write a tar to a terminal: redirect stdout or give a DEST")
    if dest != "-":
        if tar_mode(dest) is None and Path(dest).suffix.lower() in ARCHIVE_SUFFIXES_WE_DO_NOT_WRITE:
            raise UsageError(f"{dest}: export writes a directory or a tar (.tar, .tar.gz, .tgz, .tar.bz2, .tar.xz), not a"
                             f" {Path(dest).suffix} archive")  # fmt: skip
        (check_output_file if tar_mode(dest) else check_output_directory)(Path(dest))
    if proofs and (dest == "-" or tar_mode(dest) is not None):
        raise UsageError("--proofs writes its files beside a directory export: give a directory as DEST")
    with open_local_store("export") as store, out.progress("exporting") as bar:
        stdout = sys.stdout.buffer if dest == "-" else None
        summary = export_keys(store, dest, prefix=prefix, at=moment, stdout=stdout, progress=bar.update if bar.live else None)
        if proofs:
            summary.warnings.extend(write_export_proofs(store, Path(dest), summary.versions))
        show_warnings(store)
    for warning in summary.warnings:
        out.warn(warning)
    if out.json and dest != "-":
        out.document(summary.to_json())
    elif not out.quiet:
        out.info(f"exported {summary.exported} keys ({summary.bytes} bytes), skipped {summary.skipped}")
    if strict and summary.skipped:
        raise ImstoreError(f"{summary.skipped} keys could not be exported (--strict)")


def repack() -> None:
    """Merge small packs into one (atomically; no object is ever dropped).

    Example: imstore repack --json
    """
    with open_local_store("repack") as store:
        result = store.repack()
        show_warnings(store)
    out = settings.out
    for problem in result.problems:
        out.warn(problem)
    if out.json:
        document = {"packs_merged": result.packs_merged, "objects": result.objects, "bytes": result.bytes}
        out.document({**document, "pack": result.pack.name if result.pack else None, "problems": list(result.problems)})
    elif not out.quiet:
        out.info(f"merged {result.packs_merged} packs into {result.pack.name}" if result.pack else "nothing to repack")
