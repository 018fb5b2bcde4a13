"""What the commands share: opening the store, the cache settings, warnings, reading input, writing an object."""

import os
import stat
import sys
from pathlib import Path

from ..errors import ImstoreError, InvalidInput, NotAuthorised, UsageError
from ..fsio import CHUNK_SIZE
from ..paths import user_data_path
from ..store import Store
from ..validate import parse_size as validate_parse_size
from . import settings


def default_store_path() -> Path:
    return user_data_path("imstore")


def open_store(*, write: bool = False, reads_objects: bool = True):
    """The store named by --store / IMSTORE_DIR, or the default one (created on first write).

    reads_objects=False: a command that reads no object (prove, checkpoint, key) opens no read
    cache, so the cache's modules are never loaded (start-up time: prove costs no more than get).

    With --remote it is a RemoteStore: the same methods over HTTP, so commands need not care;
    the server's history is checked against the last checkpoint seen from it first.
    """
    if settings.remote:
        from ..server.client import RemoteStore  # aiohttp: tens of ms that only --remote needs
        from ..server.witness import check_history

        remote = RemoteStore(settings.remote, remote_token(), cacert=settings.cacert)
        try:
            check_history(remote)  # a server that rewrote its history is caught here (DESIGN P7)
        except BaseException:
            remote.close()
            raise
        return remote
    cache = cache_settings() if reads_objects else None
    if settings.store is not None:
        store = Store.open(settings.store, cache=cache)
    else:
        store = Store.open(default_store_path(), create=write, cache=cache)
    return store


def refuse_remote(command: str) -> None:
    """Exit 2 for a command that works on the store's files (there is no HTTP route for it) when --remote is given."""
    if settings.remote:
        raise UsageError(f"imstore {command} has no remote form: run it where the store is, without --remote")


def local_store_root(command: str) -> Path:
    """The directory of the store a command with no remote form works on: --store / IMSTORE_DIR, else the default."""
    refuse_remote(command)
    return (settings.store or default_store_path()).expanduser().absolute()


def open_local_store(command: str):
    """open_store() for a command that has no remote form."""
    refuse_remote(command)
    return open_store()


def remote_token() -> str | None:
    """The token for --remote: --token-file, else IMSTORE_TOKEN."""
    if settings.token_file is not None:
        try:
            token = settings.token_file.read_text("utf-8").strip()
        except OSError as exc:
            raise NotAuthorised(f"cannot read the token file {settings.token_file}: {exc.strerror}") from None
        from ..server.auth import token_file_warning  # only --remote gets here: it loads the server package anyway

        warning = token_file_warning(settings.token_file)
        if warning is not None:
            settings.out.warn(warning)
        return token
    return os.environ.get("IMSTORE_TOKEN") or None


def cache_settings():
    """The read cache settings (a CacheSettings) from --cache-dir, --cache-size and --no-cache (and their env vars)."""
    from ..cache import CacheSettings  # here: the cache's modules load only for a command that opens one

    defaults = CacheSettings()
    return CacheSettings(
        enabled=not settings.no_cache,
        directory=settings.cache_dir,
        size_limit=validate_parse_size(settings.cache_size) if settings.cache_size else defaults.size_limit,
    )


def show_warnings(store) -> None:
    for warning in store.warnings:
        settings.out.warn(warning)
    store.warnings.clear()
    if settings.debug:
        for note in store.notes():
            settings.out.warn(f"cache: {note}")


# ============================================================ input
def parse_size(text: str) -> int:
    """A SIZE option: validate.parse_size's one grammar, its errors as they are (they say what was wrong)."""
    return validate_parse_size(text)


_DEV_NULL = os.stat(os.devnull).st_rdev if os.path.exists(os.devnull) else None


def open_input(file: str | None, *, bounded: bool = False):
    """A binary stream for put: a regular file, a pipe or FIFO, or stdin."""
    if file is None or file == "-":
        try:
            status = os.fstat(0)
        except OSError:
            raise InvalidInput("stdin is closed: give a FILE or pipe data in") from None
        if sys.stdin is None:
            raise InvalidInput("stdin is closed: give a FILE or pipe data in")
        endless = stat.S_ISCHR(status.st_mode) and not sys.stdin.isatty() and status.st_rdev != _DEV_NULL
        if endless and not bounded:
            # /dev/zero or /dev/urandom would fill the disk: only with an explicit bound.
            raise InvalidInput("stdin is a device that may never end (like /dev/zero): give --max-size to bound it")
        if sys.stdin.isatty():
            settings.out.info("reading from the terminal; end with Ctrl-D")
        return sys.stdin.buffer
    try:
        mode = os.stat(file).st_mode
    except FileNotFoundError:
        raise InvalidInput(f"no such file: {file}") from None
    except OSError as exc:
        raise InvalidInput(f"cannot read {file}: {exc.strerror}") from None
    if stat.S_ISDIR(mode):
        raise InvalidInput(f"{file} is a directory (to store a tree, use imstore import)")
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISSOCK(mode):
        raise InvalidInput(f"{file} is a device or socket, not a file; pipe it in with '-' if you mean it")
    try:
        return open(file, "rb")
    except OSError as exc:
        raise InvalidInput(f"cannot read {file}: {exc.strerror}") from None


PROGRESS_MIN_BYTES = 16 << 20


def chunks_with_progress(source, progress):
    while chunk := source.read(CHUNK_SIZE):
        progress.advance(len(chunk))
        yield chunk


def parse_meta(items: list[str] | None) -> dict[str, str]:
    meta: dict[str, str] = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise InvalidInput(f"--meta takes NAME=VALUE, got {item!r}")
        meta[name] = value
    return meta


# ============================================================ output
# A path that cannot be made is the caller's mistake, found before the store is read: exit 2,
# as for a FILE put cannot read. Left to the write, it would be exit 6, "store unavailable".
def check_output_file(path: Path) -> None:
    """Refuse an output file whose directory is missing or is not a directory."""
    if path.is_dir():
        raise InvalidInput(f"{path} is a directory")
    parent = path.absolute().parent
    if not parent.is_dir():
        raise InvalidInput(f"cannot write {path}: {parent} {'is not a directory' if parent.exists() else 'does not exist'}")


def check_output_directory(path: Path) -> None:
    """Refuse an output directory that exists as something else or would be made under a non-directory."""
    existing = next(candidate for candidate in [path.absolute(), *path.absolute().parents] if candidate.exists())
    if not existing.is_dir():
        raise InvalidInput(f"cannot make the directory {path}: {existing} is not a directory")


def run_batch(kind: str, check_only: bool) -> None:
    """get/cat --batch: answer stdin's lines with one store (or one connection to a server), flushed one by one."""
    from ..readbatch import read_lines, serve_lines

    if settings.out.json and not check_only:
        raise UsageError("--json describes objects, it cannot carry their bytes: use it with --batch-check")
    mode = "json" if settings.out.json else ("check" if check_only else "batch")
    with open_store() as store:
        try:
            serve_lines(store, read_lines(sys.stdin.buffer), kind, mode, sys.stdout.buffer, lambda: show_warnings(store))
        except BrokenPipeError:
            raise
        except OSError as exc:  # stdout on a full disk, /dev/full
            raise ImstoreError(f"cannot write the output: {exc.strerror or exc}") from None
        finally:
            show_warnings(store)


def emit_object(reader, output: Path | None) -> None:
    from ..transfer import copy_to_file, copy_to_stream  # here: commands that write no object (prove...) skip it

    if output is None or str(output) == "-":
        try:
            copy_to_stream(reader, sys.stdout.buffer)
        except BrokenPipeError:
            raise
        except OSError as exc:  # stdout on a full disk, /dev/full
            raise ImstoreError(f"cannot write the output: {exc.strerror or exc}") from None
    else:
        copy_to_file(reader, output)
