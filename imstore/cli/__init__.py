"""The imstore command line: thin commands over the Store API.

Each command parses its options, makes one library call and hands the result to
`Output`. Exceptions become exit codes in exactly one place, `main()`.
"""

# No `from __future__ import annotations` here: typer would eval every string
# annotation on each start, which is most of `imstore get`'s start-up time.
import os
import stat
import sys
from pathlib import Path
from typing import Annotated

import typer

from .. import __version__
from ..errors import ImstoreError, InvalidInput, UsageError
from ..output import Output, history_json, log_json, ls_json, version_json
from ..validate import parse_time

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

app = typer.Typer(
    name="imstore",
    help="An immutable, versioned, content-addressed store.\n\n"
    "Every put appends a new version; nothing written is ever changed; every read is verified.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


class Settings:
    """Global options of one invocation. (A plain class: a dataclass costs ~1 ms to define at start-up.)"""

    def __init__(self, out: Output):
        self.out = out
        self.store: Path | None = None
        self.debug = False
        self.cache_dir: Path | None = None
        self.cache_size: str | None = None
        self.no_cache = False
        self.remote: str | None = None
        self.token_file: Path | None = None


settings = Settings(out=Output())


def default_store_path() -> Path:
    from ..paths import user_data_path

    return user_data_path("imstore")


def open_store(*, write: bool = False):
    """The store named by --store / IMSTORE_DIR, or the default one (created on first write).

    With --remote it is a RemoteStore: the same methods over HTTP, so commands need not care.
    """
    if settings.remote:
        from ..server.client import RemoteStore

        return RemoteStore(settings.remote, _remote_token())
    from ..store import Store

    if settings.store is not None:
        store = Store.open(settings.store, cache=cache_settings())
    else:
        store = Store.open(default_store_path(), create=write, cache=cache_settings())
    return store


def cache_settings():
    """The read cache settings from --cache-dir, --cache-size and --no-cache (and their env vars)."""
    from ..cache import CacheSettings, parse_size

    defaults = CacheSettings()
    return CacheSettings(
        enabled=not settings.no_cache,
        directory=settings.cache_dir,
        size_limit=parse_size(settings.cache_size) if settings.cache_size else defaults.size_limit,
    )


def show_warnings(store) -> None:
    for warning in store.warnings:
        settings.out.warn(warning)
    store.warnings.clear()
    if settings.debug and store.cache is not None:
        for note in store.cache.notes:
            settings.out.warn(f"cache: {note}")
        store.cache.notes.clear()


def _version_callback(value: bool) -> None:
    if value:
        print(f"imstore {__version__}")
        raise typer.Exit()


@app.callback()
def global_options(
    store: Annotated[
        Path | None,
        typer.Option(
            "--store",
            envvar="IMSTORE_DIR",
            help="Store directory (default: the user data dir, e.g. ~/.local/share/imstore).",
            show_default=False,
        ),
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON document (or JSON lines) on stdout.")] = False,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="Print only what was asked for, no chatter.")] = False,
    no_color: Annotated[bool, typer.Option("--no-color", help="No colour (NO_COLOR is honoured too).")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show a traceback on errors.")] = False,
    cache_dir: Annotated[
        Path | None,
        typer.Option(
            "--cache-dir",
            envvar="IMSTORE_CACHE_DIR",
            help="Read cache folder (default: the user cache dir, e.g. ~/.cache/imstore).",
            show_default=False,
        ),
    ] = None,
    cache_size: Annotated[
        str | None,
        typer.Option(
            "--cache-size", envvar="IMSTORE_CACHE_SIZE", help="Read cache size limit, e.g. 512M (default: 1G).", show_default=False
        ),
    ] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", envvar="IMSTORE_NO_CACHE", help="Read and write without the read cache.")] = False,
    remote: Annotated[
        str | None,
        typer.Option("--remote", envvar="IMSTORE_REMOTE", help="Work against an imstore serve at this URL.", metavar="URL"),
    ] = None,
    token_file: Annotated[
        Path | None,
        typer.Option("--token-file", help="File holding the API token for --remote (or set IMSTORE_TOKEN).", metavar="FILE"),
    ] = None,
    version: Annotated[
        bool, typer.Option("--version", callback=_version_callback, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """An immutable, versioned, content-addressed store.

    Every put appends a new version; nothing written is ever changed; every read is verified.
    """
    settings.store = store
    settings.debug = debug
    settings.cache_dir, settings.cache_size, settings.no_cache = cache_dir, cache_size, no_cache
    settings.remote = remote
    settings.token_file = token_file
    settings.out.json = json_output
    settings.out.quiet = quiet
    settings.out.color = settings.out.color and not no_color


# ============================================================ commands
@app.command()
def init(
    path: Annotated[
        Path | None, typer.Argument(help="Where to create the store (default: --store or the default store).", show_default=False)
    ] = None,
) -> None:
    """Create a store. Refuses a non-empty directory that is not a store.

    Example: imstore init ~/stores/team
    """
    from ..store import Store

    if settings.remote:
        raise UsageError("init creates a local store; it does not work with --remote")
    target = path or settings.store or default_store_path()
    store, created = Store.init(target)
    with store:
        out = settings.out
        if out.json:
            out.document({"path": str(store.root), "store_id": store.store_id, "created": created})
        else:
            out.info(f"{'created a store' if created else 'already a store'} at {store.root}")


@app.command()
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
    limit = _parse_size(max_size) if max_size is not None else None
    source = _open_input(file, bounded=limit is not None)
    size = _regular_file_size(source)
    try:
        with open_store(write=True) as store, settings.out.progress(f"put {key}", size, unit_bytes=True) as progress:
            chunks = _chunks_with_progress(source, progress) if size >= PROGRESS_MIN_BYTES else source
            result = store.put_stream(
                key,
                chunks,
                content_type=content_type,
                meta=_parse_meta(meta),
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


@app.command()
def get(
    key: Annotated[str, typer.Argument(help="The key.")],
    version: Annotated[str | None, typer.Option("--version", "-V", help="Version number to read (default: latest).", metavar="N")] = None,
    at: Annotated[
        str | None, typer.Option("--at", help="The version current at this ISO 8601 time (no offset = UTC).", metavar="TIME")
    ] = None,
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Write to this file (atomically) instead of stdout.")] = None,
) -> None:
    """Write the bytes of KEY (latest, --version N, or --at TIME) to stdout or -o FILE.

    Bytes are checked against their hash before they are written; a damaged
    object is exit 5 and nothing reaches stdout.

    Example: imstore get notes/todo.txt --version 1 -o old.txt
    """
    if version is not None and at is not None:
        raise UsageError("give --version or --at, not both")
    moment = parse_time(at) if at is not None else None
    with open_store() as store:
        found, reader = store.open_version(key, version, moment)
        show_warnings(store)
        _emit_object(reader, output)


@app.command()
def cat(
    object_hash: Annotated[str, typer.Argument(metavar="HASH", help="Full hash or a unique prefix of 8+ hex digits.")],
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Write to this file instead of stdout.")] = None,
) -> None:
    """Write the bytes of an object, by hash or unique hash prefix.

    Example: imstore cat 1f9a3b2c
    """
    with open_store() as store:
        reader = store.open_object(object_hash)
        show_warnings(store)
        _emit_object(reader, output)


@app.command()
def history(
    key: Annotated[str, typer.Argument(help="The key.")],
    limit: Annotated[int | None, typer.Option("--limit", "-n", min=1, help="Only the newest N versions.")] = None,
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


@app.command("ls")
def list_keys(
    prefix: Annotated[str, typer.Argument(help="Only keys starting with this text.")] = "",
    show_all: Annotated[bool, typer.Option("--all", "-a", help="Include deleted keys.")] = False,
    limit: Annotated[int | None, typer.Option("--limit", "-n", min=1, help="At most N keys.")] = None,
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


@app.command()
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


@app.command()
def log(
    after: Annotated[int, typer.Option("--after", min=0, help="Only records after this seq.", metavar="SEQ")] = 0,
    limit: Annotated[int | None, typer.Option("--limit", "-n", min=1, help="At most N records.")] = None,
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


@app.command()
def verify() -> None:
    """Check the hash chain, every record, every object's hash, and the index against the log.

    Exit 5 names each problem; temp files and unreferenced objects are notes.

    Example: imstore verify --json
    """
    with open_store() as store, settings.out.progress("verifying objects") as progress:
        report = store.verify(progress=progress.update)
        show_warnings(store)
    settings.out.verify_report(report)
    if not report.ok:
        raise typer.Exit(5)


@app.command()
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


# ============================================================ cache commands
cache_app = typer.Typer(help="The read cache: what it holds, and emptying it.", no_args_is_help=True)
app.add_typer(cache_app, name="cache")


def _store_cache():
    from ..cache import StoreCache

    return StoreCache.for_path(cache_settings(), settings.store or default_store_path())


@cache_app.command("stats")
def cache_stats() -> None:
    """Entries, bytes, hits and misses of the store's read cache (works while the store is down).

    Example: imstore cache stats --json
    """
    stats = _store_cache().stats()
    out = settings.out
    fields = {
        "path": stats.path,
        "store_id": stats.store_id,
        "entries": stats.entries,
        "bytes": stats.bytes,
        "hits": stats.hits,
        "misses": stats.misses,
    }
    if out.json:
        out.document(fields)
    else:
        for name, value in fields.items():
            out.line(name, "" if value is None else value)


@cache_app.command("clear")
def cache_clear(
    all_stores: Annotated[bool, typer.Option("--all", help="Clear the caches of every store, not just this one.")] = False,
) -> None:
    """Empty the read cache of the store (the store itself is untouched).

    Example: imstore cache clear
    """
    from ..cache import StoreCache

    if all_stores:
        cleared = StoreCache.clear_all(cache_settings())
    else:
        _store_cache().clear()
        cleared = 1
    out = settings.out
    if out.json:
        out.document({"cleared": cleared})
    else:
        out.info(f"cleared {cleared} cache{'s' if cleared != 1 else ''}")


# ============================================================ batch import / export / repack
@app.command("import")
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
    from ..importer import import_source

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


@app.command()
def export(
    dest: Annotated[str, typer.Argument(help="A directory, a .tar/.tar.gz/.tgz/.tar.bz2/.tar.xz file, or - for a tar on stdout.")],
    prefix: Annotated[str, typer.Option("--prefix", "-p", help="Only keys starting with this text.")] = "",
    at: Annotated[str | None, typer.Option("--at", help="Versions current at TIME (ISO 8601; no offset = UTC).", metavar="TIME")] = None,
    strict: Annotated[bool, typer.Option("--strict", help="Exit 1 when a key cannot be exported as a path.")] = False,
) -> None:
    """Write the latest (or --at TIME) version of each live key to a directory or a tar.

    Keys that cannot be a safe path inside DEST (a leading '/', an empty, '.' or
    '..' segment, a NUL) are skipped with a warning naming each; nothing is ever
    written outside DEST. Every byte is checked against its hash first.

    Example: imstore export backup.tar.gz --prefix photos/

    Example: imstore export - --at 2026-11-01 | tar -tv
    """
    from ..exporter import export as export_keys

    moment = parse_time(at) if at is not None else None
    out = settings.out
    if dest == "-" and out.stdout_is_terminal:
        raise UsageError("refusing to write a tar to a terminal: redirect stdout or give a DEST")
    with open_store() as store, out.progress("exporting") as bar:
        stdout = sys.stdout.buffer if dest == "-" else None
        summary = export_keys(store, dest, prefix=prefix, at=moment, stdout=stdout, progress=bar.update if bar.live else None)
        show_warnings(store)
    for warning in summary.warnings:
        out.warn(warning)
    if out.json and dest != "-":
        out.document(summary.to_json())
    elif not out.quiet:
        out.info(f"exported {summary.exported} keys ({summary.bytes} bytes), skipped {summary.skipped}")
    if strict and summary.skipped:
        raise ImstoreError(f"{summary.skipped} keys could not be exported (--strict)")


@app.command()
def repack() -> None:
    """Merge small packs into one (atomically; no object is ever dropped).

    Example: imstore repack --json
    """
    with open_store() as store:
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


# ============================================================ serve and tokens
@app.command()
def serve(
    host: Annotated[str, typer.Option("--host", help="Address to listen on (a LAN address needs a token).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="TCP port.")] = 8765,
    workers: Annotated[int | None, typer.Option("--workers", min=1, max=64, help="Worker processes (default: CPU count).")] = None,
    tls_cert: Annotated[Path | None, typer.Option("--tls-cert", help="TLS certificate (PEM) to serve HTTPS.", metavar="FILE")] = None,
    tls_key: Annotated[Path | None, typer.Option("--tls-key", help="TLS private key (PEM).", metavar="FILE")] = None,
    max_body: Annotated[
        str | None,
        typer.Option("--max-body", help="Largest request body (a put, or a whole remote import), e.g. 100M (default: no limit).",
                     metavar="SIZE"),  # fmt: skip
    ] = None,
    client_timeout: Annotated[
        float, typer.Option("--client-timeout", min=0.1, help="Seconds a client may stay silent mid-request before it is cut off.")
    ] = 30.0,
) -> None:
    """Serve the store over HTTP: an authenticated gateway round-robining over worker processes.

    Runs until SIGTERM or Ctrl-C, then finishes the requests in flight and exits 0.
    Every route but /healthz needs a token (imstore token create). Workers read through
    the read cache (--cache-dir, --cache-size, --no-cache), so cached reads go on while
    the store is down; a latest version served so carries X-Imstore-Stale: 1.

    Example: imstore serve --host 0.0.0.0 --port 8765 --workers 4 --max-body 1G
    """
    from ..server import run_event_loop
    from ..server.gateway import GatewayConfig, parse_size
    from ..server.gateway import serve as run_gateway

    if (tls_cert is None) != (tls_key is None):
        raise UsageError("give --tls-cert and --tls-key together")
    with _open_local_store("serve") as store:
        root = str(store.root)
    config = GatewayConfig(
        root,
        host=host,
        port=port,
        workers=workers or os.cpu_count() or 1,
        tls_cert=str(tls_cert) if tls_cert else None,
        tls_key=str(tls_key) if tls_key else None,
        max_body=parse_size(max_body) if max_body is not None else None,
        client_timeout=client_timeout,
        worker_env=_cache_env(),
    )
    run_event_loop(run_gateway(config, info=settings.out.info, warn=settings.out.warn))


def _cache_env() -> dict[str, str]:
    """The read cache settings (--cache-dir, --cache-size, --no-cache) as the environment
    CacheSettings.from_env reads in serve's workers."""
    from ..cache import CACHE_DIR_ENV, CACHE_SIZE_ENV, NO_CACHE_ENV

    cache = cache_settings()
    env = {NO_CACHE_ENV: "0" if cache.enabled else "1", CACHE_SIZE_ENV: str(cache.size_limit)}
    if cache.directory is not None:
        env[CACHE_DIR_ENV] = str(cache.directory.expanduser().absolute())
    return env


token_app = typer.Typer(help="API tokens for imstore serve (only their hashes are stored).", no_args_is_help=True)
app.add_typer(token_app, name="token")


@token_app.command("create")
def token_create(
    name: Annotated[str, typer.Option("--name", help="A name to list and revoke it by.")],
    scope: Annotated[str, typer.Option("--scope", help="read (GET/HEAD) or write (everything).")] = "read",
) -> None:
    """Create an API token and print it once; only its hash is kept (STORE/tokens, mode 0600).

    Example: imstore token create --scope write --name laptop > ~/.imstore-token
    """
    from ..server.auth import TokenStore

    with _open_local_store("token create") as store:
        token = TokenStore(store.root).create(name, scope)
    out = settings.out
    if out.json:
        out.document({"token": token, "name": name, "scope": scope})
    else:
        out.line(token)
        out.info(f"token {name!r} ({scope}) created; it is shown only now")


@token_app.command("list")
def token_list() -> None:
    """List API tokens: name, scope, created (never the tokens themselves).

    Example: imstore token list --json
    """
    from ..server.auth import TokenStore

    with _open_local_store("token list") as store:
        tokens = TokenStore(store.root).list()
    out = settings.out
    if out.json:
        out.document([{"name": t.name, "scope": t.scope, "created": t.created} for t in tokens])
    else:
        out.rows(["name", "scope", "created"], [[t.name, t.scope, t.created] for t in tokens])


@token_app.command("revoke")
def token_revoke(name: Annotated[str, typer.Argument(help="The token's name.")]) -> None:
    """Revoke an API token by name; a running serve stops accepting it within a second.

    Example: imstore token revoke laptop
    """
    from ..server.auth import TokenStore

    with _open_local_store("token revoke") as store:
        TokenStore(store.root).revoke(name)
    settings.out.info(f"token {name!r} revoked")


def _open_local_store(command: str):
    if settings.remote:
        raise UsageError(f"imstore {command} works on a local store (--store), not with --remote")
    return open_store()


def _remote_token() -> str | None:
    """The token for --remote: --token-file, else IMSTORE_TOKEN."""
    if settings.token_file is not None:
        try:
            return settings.token_file.read_text("utf-8").strip()
        except OSError as exc:
            raise InvalidInput(f"cannot read the token file {settings.token_file}: {exc.strerror}") from None
    return os.environ.get("IMSTORE_TOKEN") or None


# ============================================================ helpers
def _parse_size(text: str) -> int:
    from ..cache import parse_size

    try:
        return parse_size(text)
    except (ValueError, ImstoreError):
        raise InvalidInput(f"not a size: {text!r} (e.g. 512M, 10G)") from None


_DEV_NULL = os.stat(os.devnull).st_rdev if os.path.exists(os.devnull) else None


def _open_input(file: str | None, *, bounded: bool = False):
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


def _regular_file_size(source) -> int:
    """Size of a regular file behind source, or 0 (pipes, terminals)."""
    try:
        status = os.fstat(source.fileno())
    except (OSError, ValueError, AttributeError):
        return 0
    return status.st_size if stat.S_ISREG(status.st_mode) else 0


def _chunks_with_progress(source, progress):
    from ..store import CHUNK_SIZE

    while chunk := source.read(CHUNK_SIZE):
        progress.advance(len(chunk))
        yield chunk


def _parse_meta(items: list[str] | None) -> dict[str, str]:
    meta: dict[str, str] = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise InvalidInput(f"--meta takes NAME=VALUE, got {item!r}")
        meta[name] = value
    return meta


def _emit_object(reader, output: Path | None) -> None:
    from ..transfer import copy_to_file, copy_to_stream

    if output is None or str(output) == "-":
        try:
            copy_to_stream(reader, sys.stdout.buffer)
        except BrokenPipeError:
            raise
        except OSError as exc:  # stdout on a full disk, /dev/full
            raise ImstoreError(f"cannot write the output: {exc.strerror or exc}") from None
    else:
        if output.is_dir():
            raise InvalidInput(f"{output} is a directory")
        copy_to_file(reader, output)


# ============================================================ entry point
_OUTPUT_FLAGS = {"--json", "-q", "--quiet", "--no-color", "--debug"}


def _build_command(argv: list[str]):
    """The click command for this invocation, building only the subcommand it names.

    typer inspects every command's signature to build a group; a one-command group
    keeps start-up flat as commands are added. Top-level help sees them all.
    """
    import copy

    names = {info.name or info.callback.__name__ for info in app.registered_commands}
    wanted = _command_name(argv)
    if wanted in names:
        slim = copy.copy(app)
        slim.registered_commands = [info for info in app.registered_commands if (info.name or info.callback.__name__) == wanted]
        slim.registered_groups = []
        return typer.main.get_command(slim)
    if wanted in {info.name for info in app.registered_groups}:
        slim = copy.copy(app)
        slim.registered_commands = []
        slim.registered_groups = [info for info in app.registered_groups if info.name == wanted]
        return typer.main.get_command(slim)
    return typer.main.get_command(app)


_GLOBAL_VALUE_OPTIONS = {"--store", "--cache-dir", "--cache-size", "--remote", "--token-file"}


def _command_name(argv: list[str]) -> str | None:
    skip_next = False
    for arg in argv:
        if skip_next:
            skip_next = False
        elif arg in _GLOBAL_VALUE_OPTIONS:
            skip_next = True
        elif not arg.startswith("-"):
            return arg
        elif arg == "--":
            return None
    return None


def _hoist_output_flags(argv: list[str], command) -> list[str]:
    """Let output flags stand after the command name too (`imstore ls --json`)."""
    takes_value = set()
    for sub in [command, *getattr(command, "commands", {}).values()]:
        for param in sub.params:
            if getattr(param, "is_flag", False) or param.param_type_name != "option":
                continue
            takes_value.update(param.opts)
    hoisted, rest = [], []
    skip_next = False
    for position, arg in enumerate(argv):
        if arg == "--":
            rest.extend(argv[position:])
            break
        if skip_next:
            rest.append(arg)
            skip_next = False
        elif arg in _OUTPUT_FLAGS:
            hoisted.append(arg)
        else:
            rest.append(arg)
            skip_next = arg in takes_value
    return hoisted + rest


def exit_code_for(exc: BaseException) -> int:
    """The one place that maps an exception to an exit code."""
    if isinstance(exc, ImstoreError):
        return exc.exit_code
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    return EXIT_ERROR


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the CLI and exit with the documented code."""
    sys.exit(run(argv))


def run(argv: list[str] | None = None) -> int:
    """Run the CLI on argv; return the exit code (for tests and main)."""
    from typer._click.exceptions import NoArgsIsHelpError
    from typer._click.exceptions import UsageError as ClickUsageError
    from typer.exceptions import Abort, Exit

    args = list(sys.argv[1:] if argv is None else argv)
    global settings
    settings = Settings(out=Output())
    out = settings.out
    try:
        command = _build_command(args)
        result = command.main(_hoist_output_flags(args, command), prog_name="imstore", standalone_mode=False)
        return result if isinstance(result, int) else EXIT_OK
    except Exit as exc:
        return exc.exit_code
    except Abort:
        out.error("interrupted")
        return EXIT_INTERRUPTED
    except NoArgsIsHelpError as exc:
        print(exc.format_message())
        return EXIT_OK
    except ClickUsageError as exc:
        hint = f" (see: imstore {exc.ctx.info_name if exc.ctx and exc.ctx.parent else ''} --help)".replace("  ", " ")
        out.error(exc.format_message() + hint)
        return EXIT_USAGE
    except ImstoreError as exc:
        if settings.debug:
            import traceback

            traceback.print_exc()
        out.error(str(exc) or exc.title)
        return exc.exit_code
    except KeyboardInterrupt:
        out.error("interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): stop quietly, as cat does.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return EXIT_ERROR
    except Exception as exc:  # a bug of ours: say so plainly, traceback with --debug
        if settings.debug:
            import traceback

            traceback.print_exc()
        out.error(f"unexpected {type(exc).__name__}: {exc} (rerun with --debug for a traceback)")
        return EXIT_ERROR
