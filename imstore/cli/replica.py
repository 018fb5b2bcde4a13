"""Replication commands: clone and pull (a copy of a store, from a path or an imstore serve), and promote."""

# No `from __future__ import annotations` (see __init__.py): typer would eval the strings on each start.
from pathlib import Path
from typing import Annotated

import typer

from ..errors import UsageError
from . import settings
from .common import local_store_root, refuse_remote, remote_token, show_warnings


def _source(location: str):
    from ..feed import open_source

    token = remote_token() if location.startswith(("http://", "https://")) else None
    return open_source(location, token, settings.cacert)


def _report(verb: str, result) -> None:
    out = settings.out
    if out.json:
        out.document(result.to_json())
    elif result.up_to_date:
        out.info(f"already up to date with {result.source} (seq {result.seq})")
    else:
        out.info(f"{verb} {result.records} records in {result.frames} frames and {result.objects} objects"
                 f" ({result.object_bytes} bytes) from {result.source}; now at seq {result.seq}")  # fmt: skip


def clone(
    source: Annotated[str, typer.Argument(help="A store directory, or the URL of an imstore serve.")],
    destination: Annotated[Path, typer.Argument(help="Where the copy goes (a new or empty directory).")],
) -> None:
    """Copy a store: the same store id and a log byte for byte the source's; every object checked.

    Every frame is checked (checksum, seq, prev) and every object hashed against
    its id and made durable before the records that name it are appended.
    SOURCE is remembered as the copy's upstream for imstore pull. A URL takes a
    token with --token-file or IMSTORE_TOKEN (read scope).

    Example: imstore clone /srv/imstore /mnt/usb/imstore

    Example: imstore --token-file tok clone http://primary:8765 /srv/standby
    """
    from ..replica import clone as clone_store

    refuse_remote("clone")
    source_handle = _source(source)
    try:
        with settings.out.progress("cloning", unit_bytes=True) as bar:
            result = clone_store(source_handle, destination, progress=bar.update)
    finally:
        source_handle.close()
    _report("copied", result)


def pull(
    source: Annotated[str | None, typer.Argument(help="A store directory or a URL (default: the store's upstream).")] = None,
) -> None:
    """Catch the store up with its source: the frames after its head, byte for byte, each checked first.

    A source whose history does not contain this store's head has diverged:
    exit 5, nothing written. Nothing new: says so and exits 0.

    Example: imstore --store /mnt/usb/imstore pull

    Example: imstore --store /srv/standby --token-file tok pull http://primary:8765
    """
    from ..replica import pull as pull_store
    from ..replica import read_upstream, remember_upstream
    from ..store import Store

    root = local_store_root("pull")
    with Store.open(root) as store:
        location = source or read_upstream(store.root)
        if location is None:
            raise UsageError(f"{root} has no upstream: give SOURCE (imstore pull SOURCE)")
        source_handle = _source(location)
        try:
            with settings.out.progress("pulling", unit_bytes=True) as bar:
                result = pull_store(store, source_handle, progress=bar.update)
        finally:
            source_handle.close()
            show_warnings(store)
        if source is not None and read_upstream(store.root) is None:
            remember_upstream(store.root, source_handle.location)
    _report("pulled", result)


def promote() -> None:
    """Make a standby (a copy that follows a primary) the primary: it takes writes from now on.

    Appends an epoch record to the log (the new epoch, the head it forks from, this
    node), so the failover is part of history, and stops following. A running
    imstore serve --follow on this store notices within a second and takes writes;
    the old primary is fenced by the higher epoch.

    Example: imstore --store /srv/standby promote
    """
    from ..failover import promote as promote_store
    from ..store import Store

    root = local_store_root("promote")
    with Store.open(root) as store:
        document = promote_store(store)
        show_warnings(store)
    if settings.out.json:
        settings.out.document(document)
    else:
        settings.out.info(f"promoted: epoch {document['epoch']}, forking from seq {document['fork_seq']}; this store takes writes now")


def rejoin(
    source: Annotated[str, typer.Argument(help="The new primary: the URL of an imstore serve, or a store directory.")],
) -> None:
    """Make an old primary follow the new one: its frames the new primary never had are kept aside.

    Finds the last record both logs hold, moves the frames after it to a
    read-only file under log/orphans/ (never deleted; imstore verify lists
    them), cuts the log there, then catches up from SOURCE. The store becomes a
    standby of SOURCE: run imstore serve --follow SOURCE on it next.

    Example: imstore --store /srv/imstore --token-file tok rejoin http://b:8765
    """
    from ..failover import rejoin as rejoin_store
    from ..store import Store

    root = local_store_root("rejoin")
    with Store.open(root) as store:
        source_handle = _source(source)
        try:
            document = rejoin_store(store, source_handle)
        finally:
            source_handle.close()
            show_warnings(store)
    if settings.out.json:
        settings.out.document(document)
        return
    if document["orphans"]:
        settings.out.info(f"kept {document['orphaned_bytes']} bytes of frames {source} never had in {document['orphans']}")
    settings.out.info(f"now following {source}: at seq {document['seq']}")


def repair(
    source: Annotated[str, typer.Option("--from", metavar="SOURCE", help="A replica: a store directory or the URL of an imstore serve.")],
) -> None:
    """Heal damaged log frames and objects with a replica's copy, once it is proven to be the same bytes.

    A damaged log stretch is replaced only by the replica's frames for exactly
    that stretch whose chain links to the good records on both sides of it (the
    next record names the last one's hash); an object only by bytes that hash to
    its id. Anything unproven is left as it is and reported (exit 5).

    Example: imstore --store /srv/imstore repair --from /mnt/usb/imstore
    """
    from ..errors import CorruptLog
    from ..repair import repair as repair_store
    from ..store import Store

    root = local_store_root("repair")
    with Store.open(root) as store:
        source_handle = _source(source)
        try:
            report = repair_store(store, source_handle)
        finally:
            source_handle.close()
    out = settings.out
    if out.json:
        out.document(report.to_json())
    else:
        for stretch in report.frames:
            out.info(f"repaired log bytes {stretch} from {source}")
        for object_id in report.objects:
            out.info(f"repaired object {object_id} from {source}")
        for entry in report.superseded:
            out.info(f"the damaged copy of {entry} is left as it is; the good loose copy stands for it (imstore repack drops it)")
        if not report.frames and not report.objects and not report.refused:
            out.info("nothing to repair")
    if report.refused:
        raise CorruptLog("not repaired: " + "; ".join(report.refused))
