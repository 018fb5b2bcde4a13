"""Failover: a node's role, promotion (an epoch record in the log), and the epoch a store is at.

A store's epoch is its log's highest epoch record (0 when it was never
promoted): no side file can disagree with the log (R7). The node-local `role`
file says whether this node may append local writes: absent or `primary`, it
may; `standby` (written by `serve --follow`), it takes frames from its primary
only. `promote` appends the epoch record, then writes `role = primary`; a
running `serve --follow` sees the role file change and stops following (R9).
`rejoin` turns an old primary into a standby of the new one, keeping the frames
the new primary never had aside, read-only, in `log/orphans/` (R11).
"""

from __future__ import annotations

import socket
from pathlib import Path

from . import layout
from .errors import CorruptLog, InvalidInput, Unavailable, from_os_error
from .feed import Source
from .fsio import atomic_write, crash_point, fsync_dir
from .hashing import blake3
from .store import Store

__all__ = ["PRIMARY", "STANDBY", "read_role", "write_role", "require_primary", "promote", "node_name", "epoch_of", "rejoin",
           "orphans"]  # fmt: skip

PRIMARY = "primary"
STANDBY = "standby"
_ROLES = (PRIMARY, STANDBY)


def node_name(root: str | Path) -> str:
    """This node as the log and the primary see it: host and store path (stable across restarts)."""
    return f"{socket.gethostname()}:{Path(root).absolute()}"


def read_role(root: str | Path) -> str:
    """The node-local role of the store at root (absent: primary)."""
    try:
        role = (Path(root) / layout.ROLE).read_text("utf-8").strip()
    except FileNotFoundError:
        return PRIMARY
    except OSError as exc:
        raise from_os_error(exc, "reading the role file") from None
    return role if role in _ROLES else PRIMARY


def write_role(root: str | Path, role: str) -> None:
    if role not in _ROLES:
        raise ValueError(role)
    try:
        atomic_write(Path(root) / layout.ROLE, (role + "\n").encode("utf-8"), 0o644)
    except OSError as exc:
        raise from_os_error(exc, "writing the role file") from None


def require_primary(root: str | Path) -> None:
    """Refuse a local write on a standby: its log takes its primary's frames only (Committer._append)."""
    if read_role(root) != PRIMARY:
        raise Unavailable(f"the store at {root} is a standby: it takes no local writes (write to its primary, or run imstore promote)")


def epoch_of(store: Store) -> int:
    """The store's epoch: the highest epoch record in its log (0: never promoted)."""
    return store.indexer.current().epoch()


def promote(store: Store, node: str | None = None) -> dict:
    """Make this store a primary: an epoch record (epoch + 1, forking from the head), then role = primary."""
    upstream = store.root / layout.UPSTREAM
    if read_role(store.root) == PRIMARY and not upstream.exists():
        raise InvalidInput(f"the store at {store.root} is a primary already (epoch {epoch_of(store)}): it follows no other store")
    frame = store.committer.promote(node or node_name(store.root))
    write_role(store.root, PRIMARY)
    try:
        upstream.unlink(missing_ok=True)  # the old primary is no longer where this store's history comes from
    except OSError as exc:
        raise from_os_error(exc, "forgetting the upstream") from None
    record = frame.records[0]
    return {"epoch": record.version, "seq": record.seq, "fork_seq": int(record.meta["fork_seq"]),
            "fork_hash": record.meta["fork_hash"], "node": record.meta["node"]}  # fmt: skip


def rejoin(store: Store, source: Source, progress=None) -> dict:
    """Make an old primary follow source: frames source never had move to log/orphans/, then pull (R11).

    The last record both logs hold is found frame by frame; the bytes after it are written
    to `log/orphans/<epoch>-<offset>.log` (read-only, fsynced, never deleted; verify lists
    them) before the log is cut there and the index rebuilt, all under the writers' lock.
    """
    from .replica import last_common, pull, remember_upstream

    described = source.describe()
    if described["store_id"] != store.store_id:
        raise InvalidInput(f"{source.location} holds store {described['store_id']}, not this store ({store.store_id})")
    moved = None
    with store.log.locked():
        try:
            epoch = epoch_of(store)
        except CorruptLog:  # a rejoin cut short after its cut: the index still knows the frames cut off
            store.indexer.rebuild()
            epoch = epoch_of(store)
        common = last_common(store, source)
        cut, end = (common.end if common is not None else 0), store.log.size()
        if end > cut:
            moved = _keep_orphans(store, epoch, cut, end)
            crash_point("rejoin-orphans-kept")
            store.log.truncate(cut)
            crash_point("rejoin-log-cut")
            store.indexer.rebuild()
            _forget_answers(store.root)
    write_role(store.root, STANDBY)
    remember_upstream(store.root, source.location)
    result = pull(store, source, progress=progress)
    return {"orphans": moved, "orphaned_bytes": end - cut, "fork_offset": cut, **result.to_json()}


def _keep_orphans(store: Store, epoch: int, cut: int, end: int) -> str:
    """Write the log's bytes from cut to end to a read-only file under log/orphans/ (durable before the cut)."""
    with open(store.log.path, "rb") as handle:
        handle.seek(cut)
        data = handle.read(end - cut)
    directory = store.root / layout.ORPHANS
    path = directory / f"{epoch}-{cut}.log"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fsync_dir(directory.parent)
        if path.exists() and path.read_bytes() != data:  # a rejoin cut short earlier left the same bytes, or others
            path = directory / f"{epoch}-{cut}-{blake3(data).hexdigest()[:16]}.log"
        atomic_write(path, data, 0o444)
    except OSError as exc:
        raise from_os_error(exc, "keeping the old primary's frames aside") from None
    return str(path.relative_to(store.root))


def _forget_answers(root: Path) -> None:
    """The idempotency answers name versions that may now be orphans: a retry must not replay one."""
    for suffix in ("", "-wal", "-shm"):
        try:
            (root / (layout.LEDGER + suffix)).unlink(missing_ok=True)
        except OSError as exc:
            raise from_os_error(exc, "forgetting the stored answers") from None


def orphans(root: str | Path) -> list[tuple[str, int]]:
    """(path under the store, size) of each file of frames an old primary kept aside at a rejoin."""
    directory = Path(root) / layout.ORPHANS
    if not directory.is_dir():
        return []
    return [(str(path.relative_to(root)), path.stat().st_size) for path in sorted(directory.glob("*.log"))]
