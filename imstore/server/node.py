"""What this serve is in a replicated deployment: a primary, or a standby following one.

The gateway asks it three things: the health documents (/healthz and the two
active checks a load balancer polls, /healthz/writable and /healthz/readable),
whether a write must be refused (a standby takes none: 503 naming its
primary), and the replication lines of /metrics. A standby's Follower
(standby.py) runs in a thread of the gateway process.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .. import layout
from ..errors import ImstoreError, NotReplicated, Unavailable
from ..feed import HttpSource
from ..standby import Follower
from ..store import Store
from .headers import non_negative

__all__ = ["Node", "SyncGate"]


class Node:
    """The role of one serve: `primary` (takes writes) or `standby` (follows `follow`, refuses writes)."""

    def __init__(self, store_root: str, follow: str | None = None, token: str | None = None, cacert: str | None = None, log=None,
                 sync_standbys: int = 0, sync_timeout: float = 5.0):  # fmt: skip
        self.store_root = store_root
        node_name = f"{socket.gethostname()}:{Path(store_root).absolute()}"  # stable across restarts: one standby, one entry
        self.follower = Follower(store_root, HttpSource(follow, token, cacert, node=node_name), log) if follow else None
        self.sync = SyncGate(Path(store_root) / layout.LOG_SEGMENT, sync_standbys, sync_timeout) if sync_standbys else None
        self._heads = ThreadPoolExecutor(1, thread_name_prefix="imstore-head")  # one Store, one SQLite connection
        self._store: Store | None = None

    @property
    def role(self) -> str:
        return "standby" if self.follower is not None else "primary"

    def start(self) -> None:
        if self.follower is not None:
            self.follower.start()

    def stop(self) -> None:
        if self.follower is not None:
            self.follower.stop()
        self._heads.shutdown(wait=False)

    def write_refusal(self) -> ImstoreError | None:
        """Why a write cannot be taken here (None: it can)."""
        if self.follower is None:
            return None
        primary = self.follower.source.location
        return Unavailable(f"this server is a standby following {primary}: it takes no writes; send them to the primary at {primary}")

    async def document(self) -> dict:
        """role, epoch, head and (on a standby) primary and lag: what /healthz adds for load balancers and people."""
        if self.follower is not None:
            status = self.follower.status()
            return {"role": "standby", "epoch": 0, **status}
        head = await asyncio.get_running_loop().run_in_executor(self._heads, self._head)
        return {"role": "primary", "epoch": 0, "head": head}

    def _head(self) -> dict | None:
        try:
            if self._store is None:
                self._store = Store.open(Path(self.store_root))
            seq, chain = self._store.log_position()
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
            ok = up and self.role == "primary"
            return (200 if ok else 503), {"writable": ok, "role": self.role}
        limit = query.get("max_lag")
        max_lag = non_negative(limit, "max_lag") if limit is not None else None
        lag = role.get("lag_records", 0)
        ok = up and (max_lag is None or (lag is not None and lag <= max_lag))
        return (200 if ok else 503), {"readable": ok, "role": self.role, "lag_records": lag}

    def metrics(self) -> str:
        """Prometheus lines for replication (a standby's lag; nothing on a primary)."""
        if self.follower is None:
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
