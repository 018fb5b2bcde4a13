"""Commands that run or look after a store rather than its keys: cache stats and clear, serve, token create, list and revoke."""

# No `from __future__ import annotations` (see __init__.py): typer would eval the strings on each start.
import os
from pathlib import Path
from typing import Annotated

import typer

from ..cache import CACHE_DIR_ENV, CACHE_SIZE_ENV, NO_CACHE_ENV, StoreCache
from ..errors import UsageError
from ..server.auth import TokenStore
from ..store import Store
from . import settings
from .common import cache_settings, default_store_path, open_local_store, refuse_remote, remote_token

# ============================================================ cache commands
cache_app = typer.Typer(name="cache", help="The read cache: what it holds, and emptying it.", no_args_is_help=True, add_completion=False)


def _store_cache():
    return StoreCache.for_path(cache_settings(), settings.store or default_store_path())


def _check_store_or_cache() -> None:
    """Exit 10 for a path with neither a store nor a cache of one (README: "exit 10 unless a cache for it exists")."""
    root = settings.store or default_store_path()
    if StoreCache.existing_store_id(cache_settings(), root) is None:
        Store.open(root).close()  # NoStore when there is no store either


@cache_app.command("stats")
def cache_stats() -> None:
    """Entries, bytes, hits and misses of the store's read cache (works while the store is down).

    Example: imstore cache stats --json
    """
    refuse_remote("cache stats")
    _check_store_or_cache()
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
    refuse_remote("cache clear")
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


# ============================================================ serve and tokens
def serve(
    host: Annotated[str, typer.Option("--host", help="Address to listen on (a LAN address needs a token).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="TCP port.")] = 8765,
    workers: Annotated[int | None, typer.Option("--workers", min=1, max=64, help="Worker processes (default: CPU count).")] = None,
    tls_cert: Annotated[Path | None, typer.Option("--tls-cert", help="TLS certificate (PEM) to serve HTTPS.", metavar="FILE")] = None,
    tls_key: Annotated[Path | None, typer.Option("--tls-key", help="TLS private key (PEM).", metavar="FILE")] = None,
    max_body: Annotated[
        str | None,
        typer.Option("--max-body", help="Largest request body (a put, or a whole remote import, also what a compressed import"
                     " expands to), e.g. 100M (default: no limit).", metavar="SIZE"),  # fmt: skip
    ] = None,
    client_timeout: Annotated[
        float, typer.Option("--client-timeout", min=0.1, help="Seconds a client may stay silent mid-request before it is cut off.")
    ] = 30.0,
    worker_timeout: Annotated[
        float | None,
        typer.Option("--worker-timeout", min=0.1, envvar="IMSTORE_WORKER_TIMEOUT", metavar="SECONDS",
                     help="Seconds a worker may go without answering its health check before it is killed and replaced;"
                          " after a fifth of this it gets no new requests (default 10)."),  # fmt: skip
    ] = None,
    follow: Annotated[
        str | None,
        typer.Option("--follow", metavar="URL", help="Be a standby of the imstore serve at URL: pull from it continuously (a"
                     " clone first if there is no store yet), serve reads, refuse writes naming it. Its token: --token-file"
                     " or IMSTORE_TOKEN."),  # fmt: skip
    ] = None,
    peer: Annotated[
        list[str] | None,
        typer.Option("--peer", metavar="URL", help="Another node of this deployment (repeatable): asked for its epoch at start"
                     " and every second; one at a higher epoch superseded this node, which then takes no writes (fenced)."),  # fmt: skip
    ] = None,
    sync_standbys: Annotated[
        int, typer.Option("--sync-standbys", min=0, metavar="N", help="Sync mode: answer a write only once N standbys (serve"
                          " --follow with a replicate token) hold it durably.")  # fmt: skip
    ] = 0,
    sync_timeout: Annotated[
        float, typer.Option("--sync-timeout", min=0.01, metavar="SECONDS", help="Sync mode: past this, a write is answered 503"
                            " (committed here, not confirmed replicated) rather than waited for.")  # fmt: skip
    ] = 5.0,
    s3_port: Annotated[
        int | None,
        typer.Option("--s3-port", min=0, max=65535, metavar="PORT",
                     help="Also speak S3 (path-style) on this port: keys are BUCKET/KEY; sign with token create --s3 keys."),  # fmt: skip
    ] = None,
    s3_upload_expiry: Annotated[
        float,
        typer.Option("--s3-upload-expiry", min=0, metavar="DAYS",
                     help="With --s3-port: remove multipart uploads nothing touched for this long, at start and hourly"
                          " (S3's AbortIncompleteMultipartUpload; 0: keep them)."),  # fmt: skip
    ] = 7.0,
) -> None:
    """Serve the store over HTTP: an authenticated gateway round-robining over worker processes.

    Runs until SIGTERM or Ctrl-C, then finishes the requests in flight and exits 0.
    Every route but /healthz needs a token (imstore token create). Workers read through
    the read cache (--cache-dir, --cache-size, --no-cache), so cached reads go on while
    the store is down; a latest version served so carries X-Imstore-Stale: 1. A hung
    worker is routed around and replaced (--worker-timeout).

    With --s3-port, S3 clients (aws-cli, boto3, rclone, restic) reach the same store:
    versioning always on, Object Lock in COMPLIANCE mode, a DELETE adds a delete marker.

    Example: imstore serve --host 0.0.0.0 --port 8765 --workers 4 --max-body 1G

    Example: imstore --store /srv/standby --token-file tok serve --follow http://primary:8765

    Example: imstore serve --sync-standbys 1 --sync-timeout 2

    Example: imstore serve --peer http://b:8765
    """
    # aiohttp and the server: a quarter of a second that only serve needs.
    from ..server import run_event_loop
    from ..server.gateway import GatewayConfig
    from ..server.gateway import serve as run_gateway
    from ..server.s3.multipart import EXPIRY_ENV as S3_EXPIRY_ENV
    from ..validate import parse_size

    if (tls_cert is None) != (tls_key is None):
        raise UsageError("give --tls-cert and --tls-key together")
    follow_token = None
    if follow is not None:
        follow_token = remote_token()
        _clone_for_standby(follow, follow_token)
    with open_local_store("serve") as store:
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
        worker_env={**_cache_env(), **({S3_EXPIRY_ENV: str(s3_upload_expiry)} if s3_port is not None else {})},
        token_file=str(settings.token_file) if settings.token_file else None,
        follow=follow,
        sync_standbys=sync_standbys,
        sync_timeout=sync_timeout,
        peers=tuple(peer or ()),
        follow_token=follow_token,
        cacert=str(settings.cacert) if settings.cacert else None,
        s3_port=s3_port,
        **({"worker_timeout": worker_timeout} if worker_timeout is not None else {}),
    )
    run_event_loop(run_gateway(config, info=settings.out.info, warn=settings.out.warn))


def _clone_for_standby(primary: str, token: str | None) -> None:
    """A standby with no store yet starts as a clone of its primary (then follows it)."""
    from ..feed import HttpSource
    from ..layout import CONFIG
    from ..replica import clone

    root = (settings.store or default_store_path()).expanduser().absolute()
    if (root / CONFIG).exists():
        return
    settings.out.info(f"imstore serve: no store at {root} yet: cloning {primary} first")
    clone(HttpSource(primary, token, settings.cacert), root)


def _cache_env() -> dict[str, str]:
    """The read cache settings (--cache-dir, --cache-size, --no-cache) as the environment
    CacheSettings.from_env reads in serve's workers."""
    cache = cache_settings()
    env = {NO_CACHE_ENV: "0" if cache.enabled else "1", CACHE_SIZE_ENV: str(cache.size_limit)}
    if cache.directory is not None:
        env[CACHE_DIR_ENV] = str(cache.directory.expanduser().absolute())
    return env


token_app = typer.Typer(
    name="token", help="API tokens for imstore serve (only their hashes are stored).", no_args_is_help=True, add_completion=False
)


@token_app.command("create")
def token_create(
    name: Annotated[str, typer.Option("--name", help="A name to list and revoke it by.")],
    scope: Annotated[
        str,
        typer.Option("--scope", help="read (GET/HEAD), write (everything but the replication feed) or replicate"
                                     " (read, the replication feed, and acknowledge frames as a standby)."),  # fmt: skip
    ] = "read",
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write the token to FILE (mode 0600) instead of stdout.", metavar="FILE")
    ] = None,
    s3: Annotated[bool, typer.Option("--s3", help="An S3 key pair (access key id and secret) for serve --s3-port.")] = False,
) -> None:
    """Create an API token and print it once; only its hash is kept (STORE/tokens, mode 0600).

    A running serve accepts it at once. With --s3 it is an S3 access key id and secret key
    instead; SigV4 needs the server to know the secret, so that one is kept in STORE/tokens itself.

    Example: imstore token create --scope write --name laptop --output ~/.imstore-token
    """
    if s3:
        _create_s3_key(name, scope, output)
        return
    with open_local_store("token create") as store:
        token = TokenStore(store.root).create(name, scope)
    out = settings.out
    if output is not None:
        _write_private(output, token + "\n")
        out.info(f"token {name!r} ({scope}) created and written to {output} (mode 0600); it is shown nowhere else")
    elif out.json:
        out.document({"token": token, "name": name, "scope": scope})
    else:
        out.line(token)
        out.info(f"token {name!r} ({scope}) created; it is shown only now")


def _create_s3_key(name: str, scope: str, output: Path | None) -> None:
    with open_local_store("token create") as store:
        access_key_id, secret = TokenStore(store.root).create_s3(name, scope)
    out = settings.out
    document = {"name": name, "scope": scope, "access_key_id": access_key_id, "secret_access_key": secret}
    if output is not None:
        _write_private(output, f"[default]\naws_access_key_id = {access_key_id}\naws_secret_access_key = {secret}\n")
        out.info(f"S3 key {name!r} ({scope}) created and written to {output} (mode 0600, an AWS credentials file)")
    elif out.json:
        out.document(document)
    else:
        out.line(f"access_key_id     {access_key_id}")
        out.line(f"secret_access_key {secret}")
        out.info(f"S3 key {name!r} ({scope}) created; the secret is shown only now")


@token_app.command("list")
def token_list() -> None:
    """List API tokens and S3 keys: name, scope, created, an S3 key's access key id (never a token or secret).

    Example: imstore token list --json
    """
    with open_local_store("token list") as store:
        tokens = TokenStore(store.root).list()
    out = settings.out
    if out.json:
        out.document([{"name": t.name, "scope": t.scope, "created": t.created,
                       **({"access_key_id": t.access_key_id} if t.access_key_id else {})} for t in tokens])  # fmt: skip
    else:
        out.rows(["name", "scope", "created", "s3 key"], [[t.name, t.scope, t.created, t.access_key_id or "-"] for t in tokens])


@token_app.command("revoke")
def token_revoke(name: Annotated[str, typer.Argument(help="The token's name.")]) -> None:
    """Revoke an API token by name; a running serve stops accepting it within a second.

    Example: imstore token revoke laptop
    """
    with open_local_store("token revoke") as store:
        TokenStore(store.root).revoke(name)
    settings.out.info(f"token {name!r} revoked")



def _write_private(path: Path, text: str) -> None:
    """Write a secret to path readable by its owner alone (0600 even if the file was there, never through a symlink)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, text.encode("utf-8"))
        finally:
            os.close(fd)
    except OSError as exc:
        raise UsageError(f"cannot write the token to {path}: {exc.strerror or exc}") from None
