"""Failover: a node's role, promotion (an epoch record in the log), and the epoch a store is at.

A store's epoch is its log's highest epoch record (0 when it was never
promoted): no side file can disagree with the log (R7). The node-local `role`
file says whether this node may append local writes: absent or `primary`, it
may; `standby` (written by `serve --follow`), it takes frames from its primary
only. `promote` appends the epoch record, then writes `role = primary`; a
running `serve --follow` sees the role file change and stops following (R9).
"""

from __future__ import annotations

import socket
from pathlib import Path

from . import layout
from .errors import InvalidInput, Unavailable, from_os_error
from .fsio import atomic_write
from .store import Store

__all__ = ["PRIMARY", "STANDBY", "read_role", "write_role", "require_primary", "promote", "node_name", "epoch_of"]

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
