"""Rendering for the CLI: tab-separated lines, a rich table on a terminal, or JSON.

stdout is data and stderr is messages. Colour and tables only on a terminal,
never with NO_COLOR or --no-color. rich is imported only when it will be used,
so `imstore get` starts fast.
"""

from __future__ import annotations

import os
import sys
from typing import IO, Any

from ..model import PutResult, VerifyReport, Version, version_fields

__all__ = ["Output", "put_json", "history_json", "ls_json", "log_json", "version_json"]


def put_json(result: PutResult) -> dict:
    version = result.version
    return {"key": version.key, "version": version.version, "hash": version.hash, "size": version.size, "unchanged": result.unchanged}


def history_json(version: Version) -> dict:
    return {
        "version": version.version,
        "op": version.op,
        "hash": version.hash,
        "size": version.size,
        "time": version.time,
        "content_type": version.content_type,
        "message": version.message,
    }


def ls_json(version: Version) -> dict:
    return {"key": version.key, "version": version.version, "hash": version.hash, "size": version.size, "time": version.time}


def log_json(version: Version) -> dict:
    return {
        "seq": version.seq,
        "op": version.op,
        "key": version.key,
        "version": version.version,
        "hash": version.hash,
        "size": version.size,
        "time": version.time,
    }


def version_json(version: Version) -> dict:
    """Everything about one version (rm)."""
    return version_fields(version)


def _text(value: Any) -> str:
    if value is None:
        return "-"
    # Tabs and newlines inside a field would break the one-line-per-item promise.
    return str(value).replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


class Output:
    """Where and how the CLI writes. Streams are injectable so tests need no terminal.

    A plain class, not a dataclass: every command makes one at start-up, and
    defining a dataclass costs about a millisecond there.
    """

    def __init__(
        self, json: bool = False, quiet: bool = False, color: bool = True, stdout: IO[str] | None = None, stderr: IO[str] | None = None
    ):
        self.json = json
        self.quiet = quiet
        self.color = color and not os.environ.get("NO_COLOR")
        self.stdout: IO[str] = sys.stdout if stdout is None else stdout
        self.stderr: IO[str] = sys.stderr if stderr is None else stderr

    @property
    def stdout_is_terminal(self) -> bool:
        return hasattr(self.stdout, "isatty") and self.stdout.isatty()

    @property
    def stderr_is_terminal(self) -> bool:
        return hasattr(self.stderr, "isatty") and self.stderr.isatty()

    # ------------------------------------------------------------ messages (stderr)
    def error(self, message: str) -> None:
        self._message(f"imstore: error: {message}", "bold red")

    def warn(self, message: str) -> None:
        self._message(f"imstore: warning: {message}", "yellow")

    def info(self, message: str) -> None:
        if not self.quiet:
            self._message(message, None)

    def _message(self, text: str, style: str | None) -> None:
        text = text.replace("\n", " ")
        if style and self.color and self.stderr_is_terminal:
            from rich.console import Console
            from rich.text import Text

            Console(file=self.stderr, highlight=False).print(Text(text, style=style))
        else:
            print(text, file=self.stderr, flush=True)

    def progress(self, label: str, total: int | None = None, *, unit_bytes: bool = False) -> Progress:
        """A progress bar on stderr when it is a terminal; a silent one otherwise."""
        live = not (self.json or self.quiet) and self.stderr_is_terminal
        return Progress(label, total, unit_bytes=unit_bytes, live=live, color=self.color, stream=self.stderr)

    # ------------------------------------------------------------ data (stdout)
    def document(self, value: Any) -> None:
        """One JSON document on stdout."""
        import json

        self.stdout.write(json.dumps(value, ensure_ascii=False) + "\n")
        self.stdout.flush()

    def rows(self, headers: list[str], rows: list[list[Any]]) -> None:
        """One line per row with tab-separated fields; a table on a terminal."""
        if self.stdout_is_terminal and rows:
            from rich.console import Console
            from rich.table import Table

            table = Table(box=None, header_style="bold" if self.color else None, show_edge=False, pad_edge=False)
            for header in headers:
                table.add_column(header, overflow="fold")
            for row in rows:
                # A whole 64-digit hash wraps the table on most terminals: the first 16 digits name it
                # (cat takes a prefix); piped output and --json always carry the full hash.
                table.add_row(*(_short_hash(_text(value)) for value in row))
            Console(file=self.stdout, no_color=not self.color, highlight=False, soft_wrap=True).print(table)
            return
        for row in rows:
            self.stdout.write("\t".join(_text(value) for value in row) + "\n")
        self.stdout.flush()

    def line(self, *fields: Any) -> None:
        self.stdout.write("\t".join(_text(value) for value in fields) + "\n")
        self.stdout.flush()

    # ------------------------------------------------------------ composite results
    def put_result(self, result: PutResult) -> None:
        if self.json:
            self.document(put_json(result))
        elif not self.quiet:
            version = result.version
            self.line(version.key, version.version, version.hash, version.size, "unchanged" if result.unchanged else "new")

    def verify_report(self, report: VerifyReport) -> None:
        if self.json:
            self.document(
                {
                    "ok": report.ok,
                    "problems": report.problems,
                    "warnings": report.warnings,
                    "notes": report.notes,
                    "records": report.records,
                    "keys": report.keys,
                    "objects": report.objects,
                    "bytes": report.bytes,
                }
            )
            return
        for kind, items in (("problem", report.problems), ("warning", report.warnings), ("note", report.notes)):
            if kind == "note" and self.quiet:
                continue
            for item in items:
                self.line(kind, item)
        if not self.quiet or not report.ok:
            status = "ok" if report.ok else f"FAILED ({len(report.problems)} problems)"
            self.line(
                "summary",
                f"{status}: {report.records} records, {report.keys} keys, {report.objects} objects ({report.bytes} bytes) checked",
            )


class Progress:
    """A rich progress bar (transient, on stderr) used as a context manager.

    `update(done, total)` or `advance(amount)`; when not live (a pipe, --json,
    -q) every call is a cheap no-op and rich is never imported.
    """

    def __init__(self, label: str, total: int | None, *, unit_bytes: bool, live: bool, color: bool, stream: IO[str]):
        self.label, self.total, self.unit_bytes, self.live, self.color = label, total, unit_bytes, live, color
        self.stream = stream
        self._bar = None
        self._task = None

    def __enter__(self) -> Progress:
        if self.live:
            from rich import progress as rich_progress
            from rich.console import Console

            columns = [
                rich_progress.TextColumn("{task.description}"),
                rich_progress.BarColumn(),
                rich_progress.DownloadColumn() if self.unit_bytes else rich_progress.MofNCompleteColumn(),
                rich_progress.TransferSpeedColumn() if self.unit_bytes else rich_progress.TaskProgressColumn(),
                rich_progress.TimeRemainingColumn(),
            ]
            console = Console(file=self.stream, no_color=not self.color)
            self._bar = rich_progress.Progress(*columns, console=console, transient=True)
            self._bar.start()
            self._task = self._bar.add_task(self.label, total=self.total)
        return self

    def update(self, done: int, total: int | None = None, *, label: str | None = None) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=done, total=total if total is not None else self.total, description=label or self.label)

    def advance(self, amount: int) -> None:
        if self._bar is not None:
            self._bar.advance(self._task, amount)

    def __exit__(self, *exc_info) -> None:
        if self._bar is not None:
            self._bar.stop()


def _short_hash(text: str) -> str:
    """A full object hash shortened for a terminal table (16 hex digits and an ellipsis); other text as it is."""
    if len(text) == 64 and all(char in "0123456789abcdef" for char in text):
        return text[:16] + "…"
    return text
