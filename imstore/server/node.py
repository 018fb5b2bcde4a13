"""What this serve is in a replicated deployment: a primary, or a standby following one.

The gateway asks it three things: the health documents (/healthz and the two
active checks a load balancer polls, /healthz/writable and /healthz/readable),
whether a write must be refused (a standby takes none: 503 naming its
primary), and the replication lines of /metrics. A standby's Follower
(standby.py) runs in a thread of the gateway process.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .. import layout
from ..errors import ImstoreError, NotReplicated, Unavailable
from ..failover import PRIMARY, STANDBY, read_role, write_role
from ..feed import EPOCH_HEADER, NODE_HEADER, HttpSource
from ..standby import Follower
from ..store import Store
from .headers import non_negative

__all__ = ["Node", "SyncGate", "PeerWatch", "PEER_INTERVAL"]

PEER_INTERVAL = 1.0  # seconds between two looks at the peers' epochs (--peer)


def _was_promoted(root: str) -> bool:
    """A store whose role file says primary was promoted (serve --follow writes standby): it follows no one."""
    return (Path(root) / layout.ROLE).exists() and read_role(root) == PRIMARY


class Node:
    """The role of one serve: `primary` (takes writes), `standby` (follows `follow`, refuses writes), or `fenced`.

    A standby whose store is promoted (imstore promote writes role = primary) stops following
    and takes writes (R9). A primary given peers (--peer) asks each for its epoch at start and
    every PEER_INTERVAL; a peer at a higher epoch superseded it: it turns `fenced` and takes no
    write again (R10). So does a primary asked for frames by a standby of a higher epoch.
    """

    def __init__(self, store_root: str, follow: str | None = None, token: str | None = None, cacert: str | None = None, log=None,
                 sync_standbys: int = 0, sync_timeout: float = 5.0, peers: tuple[str, ...] = ()):  # fmt: skip
        self.store_root = store_root
        self._log = log or (lambda line: None)
        if follow and _was_promoted(store_root):
            self._log(f"imstore serve: {store_root} was promoted (its role file says primary): it does not follow {follow}")
            follow = None
        elif follow:
            write_role(store_root, STANDBY)  # its local writes are refused by the committer too
        node_name = f"{socket.gethostname()}:{Path(store_root).absolute()}"  # stable across restarts: one standby, one entry
        self.follower = Follower(store_root, HttpSource(follow, token, cacert, node=node_name), log) if follow else None
        self.sync = SyncGate(Path(store_root) / layout.LOG_SEGMENT, sync_standbys, sync_timeout) if sync_standbys else None
        self._heads = ThreadPoolExecutor(1, thread_name_prefix="imstore-head")  # one Store, one SQLite connection
        self._store: Store | None = None
        self.epoch = 0  # the store's, as last read (its log's highest epoch record)
        self.fenced_by: str | None = None
        self.peers = PeerWatch(self, peers, cacert) if peers else None

    @property
    def role(self) -> str:
        if self.fenced_by is not None:
            return "fenced"
        return "standby" if self.follower is not None and not self.follower.promoted.is_set() else "primary"

    def start(self) -> None:
        if self.follower is not None:
            self.follower.start()
        if self.peers is not None:
            self.peers.start()

    def stop(self) -> None:
        if self.follower is not None:
            self.follower.stop()
        if self.peers is not None:
            self.peers.stop()
        self._heads.shutdown(wait=False)

    def fence(self, why: str) -> None:
        if self.fenced_by is None:
            self.fenced_by = why
            self._log(f"imstore serve: fenced: {why}; this node takes no writes (imstore rejoin URL makes it follow the new primary)")

    def write_refusal(self) -> ImstoreError | None:
        """Why a write cannot be taken here (None: it can)."""
        role = self.role
        if role == "fenced":
            return Unavailable(f"this server was superseded ({self.fenced_by}): it takes no writes; send them to the new primary")
        if role == "standby":
            primary = self.follower.source.location
            return Unavailable(f"this server is a standby following {primary}: it takes no writes; send them to the primary at {primary}")
        if self.peers is not None and not self.peers.checked.is_set():
            return Unavailable("this server is asking its peers (--peer) whether it was superseded; retry in a moment")
        return None

    async def acknowledge(self, headers, offset: int) -> None:
        """A replicate request for frames from offset: a standby's acknowledgement when it is of this node's epoch.

        A higher epoch proves this node was superseded (fenced, never counted). A lower one is
        served frames (a new standby catching up) but not counted: its log may hold an old
        primary's frames at the same offsets (sync writes come after the epoch record anyway)."""
        theirs = headers.get(EPOCH_HEADER, "0")
        theirs = int(theirs) if theirs.isdigit() else 0
        if theirs > self.epoch:
            await asyncio.get_running_loop().run_in_executor(self._heads, self._head)  # our epoch, read again
            if theirs > self.epoch:
                self.fence(f"a standby at epoch {theirs} asked for frames; this node is at epoch {self.epoch}")
                return  # never counted: an old primary can acknowledge nothing (R10)
        if self.sync is not None and theirs == self.epoch:  # a lower epoch may be a diverged old primary: no ack (R10)
            await self.sync.ack(headers.get(NODE_HEADER, "-"), offset)

    async def document(self) -> dict:
        """role, epoch, head and (on a standby) primary and lag: what /healthz adds for load balancers and people."""
        head = await asyncio.get_running_loop().run_in_executor(self._heads, self._head)
        role = self.role
        if role == "standby":
            status = self.follower.status()
            return {**status, "role": "standby", "epoch": self.epoch}
        document = {"role": role, "epoch": self.epoch, "head": head}
        if role == "fenced":
            document["fenced_by"] = self.fenced_by
        return document

    def _head(self) -> dict | None:
        try:
            if self._store is None:
                self._store = Store.open(Path(self.store_root))
            seq, chain = self._store.log_position()
            self.epoch = self._store.indexer.current().epoch()
        except ImstoreError:
            if self._store is not None:
                self._store.close()
                self._store = None
            return None  # the store is away: /healthz says so through its status, not a crash
        return {"seq": seq, "hash": chain if seq else ""}

    async def health(self, route: str, query: dict, workers: dict, with_token: bool) -> tuple[int, dict]:
        """The answer to one of the public health routes: (status, document)."""
        role = await self.document()
        up = workers["status"] != "down"
        if route == "healthz":
            public = {"status": workers["status"], **role}
            return (200 if up else 503), ({**workers, **public} if with_token else public)
        if route == "healthz_writable":
            ok = up and self.write_refusal() is None
            return (200 if ok else 503), {"writable": ok, "role": self.role}
        limit = query.get("max_lag")
        max_lag = non_negative(limit, "max_lag") if limit is not None else None
        lag = role.get("lag_records", 0)
        ok = up and (max_lag is None or (lag is not None and lag <= max_lag))
        return (200 if ok else 503), {"readable": ok, "role": self.role, "lag_records": lag}

    def metrics(self) -> str:
        """Prometheus lines for replication (a standby's lag; nothing on a primary)."""
        if self.follower is None or self.follower.promoted.is_set():
            return ""
        status = self.follower.status()
        lines = []
        for name, value, text in (
            ("imstore_replication_lag_records", status["lag_records"], "Records the primary has that this standby does not yet."),
            ("imstore_replication_lag_bytes", status["lag_bytes"], "Log bytes the primary has that this standby does not yet."),
            ("imstore_replication_lag_seconds", status["lag_seconds"], "Seconds since this standby last held all the primary had."),
            ("imstore_replication_up", 0 if status["error"] else 1, "Whether the last replication round worked (1) or failed (0)."),
        ):
            lines += [f"# HELP {name} {text}", f"# TYPE {name} gauge", f"{name} {value if value is not None else 'NaN'}"]
        return "\n".join(lines) + "\n"


class SyncGate:
    """Sync mode on a primary: a write is answered only once `standbys` standbys hold the log up to it durably.

    A standby acknowledges with each request for frames (with a replicate token): asking
    from offset X says everything before X is durable there. The gateway records the
    highest offset per standby (in memory: a restarted primary starts with none, and waits
    for the next request of each). A write answered 2xx by a worker waits until enough
    standbys acknowledged the log's end as it was then (its frame is inside), at most
    `timeout` seconds; then NotReplicated (503): committed here, not confirmed replicated.
    """

    def __init__(self, segment: Path, standbys: int, timeout: float):
        self.segment = segment
        self.standbys = standbys
        self.timeout = timeout
        self.acks: dict[str, tuple[int, float]] = {}  # standby -> (durable offset, when it said so)
        self._changed: asyncio.Condition | None = None

    def _condition(self) -> asyncio.Condition:
        if self._changed is None:
            self._changed = asyncio.Condition()
        return self._changed

    async def ack(self, node: str, offset: int) -> None:
        held = self.acks.get(node, (0, 0.0))[0]
        self.acks[node] = (max(held, offset), time.monotonic())
        async with self._condition():
            self._condition().notify_all()

    def holding(self, target: int) -> int:
        return sum(1 for offset, _when in self.acks.values() if offset >= target)

    async def wait(self) -> None:
        """Return once enough standbys hold the log as it ends now; NotReplicated at the timeout (never a hang)."""
        try:
            target = os.stat(self.segment).st_size
        except OSError as exc:
            raise Unavailable(f"cannot read the log's end to wait for standbys: {exc.strerror}") from None
        condition = self._condition()
        async with condition:
            try:
                await asyncio.wait_for(condition.wait_for(lambda: self.holding(target) >= self.standbys), self.timeout)
            except TimeoutError:
                raise NotReplicated(
                    f"the write is committed on this primary but {self.holding(target)} of the {self.standbys} standby(s) it"
                    f" needs confirmed it within {self.timeout:g} s; retry with the same Idempotency-Key to learn when it is"
                ) from None


class PeerWatch:
    """Asks each peer's /healthz for its epoch at start and every PEER_INTERVAL (a thread); a higher one fences the node.

    `checked` is set once every peer answered or failed to (an unreachable peer cannot be waited
    for: a primary whose standby is down must still take writes).
    """

    def __init__(self, node: Node, peers: tuple[str, ...], cacert: str | None):
        self.node = node
        self.peers = tuple(peer.rstrip("/") for peer in peers)
        self.checked = threading.Event()
        self._stop = threading.Event()
        self._context = ssl.create_default_context(cafile=cacert) if cacert else None
        self._thread = threading.Thread(target=self._run, name="imstore-peers", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        store = None
        while not self._stop.is_set():
            try:
                if store is None:
                    store = Store.open(Path(self.node.store_root))
                ours = store.indexer.current().epoch()
                self.node.epoch = max(self.node.epoch, ours)
                for peer in self.peers:
                    theirs = self._epoch_of(peer)
                    if theirs is not None and theirs > ours:
                        self.node.fence(f"{peer} is at epoch {theirs}, this node at epoch {ours}")
            except ImstoreError:
                if store is not None:
                    store.close()
                    store = None
            self.checked.set()
            self._stop.wait(PEER_INTERVAL)
        if store is not None:
            store.close()

    def _epoch_of(self, peer: str) -> int | None:
        try:
            with urllib.request.urlopen(peer + "/healthz", timeout=PEER_INTERVAL, context=self._context) as answer:  # noqa: S310
                document = json.loads(answer.read())
        except urllib.error.HTTPError as exc:  # a peer whose workers are down still says its epoch (503)
            try:
                document = json.loads(exc.read())
            except ValueError:
                return None
        except (OSError, ValueError):
            return None
        epoch = document.get("epoch") if isinstance(document, dict) else None
        return epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else None
