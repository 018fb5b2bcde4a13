"""A standby: a thread that keeps a store pulling from its primary, and what it knows about its lag.

`serve --follow URL` runs one `Follower` in its gateway. Each round is a
`replica.pull` whose first request is a long poll (the primary answers as soon
as its log grows), so a write on the primary is readable here within a round
trip. A round that fails stops nothing but itself: the reason is kept for
/healthz and the log, and the follower tries again (1 s after an outage, 5 s
after the primary sent something refused: it must be fixed or replaced first).
Nothing is ever appended that failed its checks (replica.py).
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

from .errors import ImstoreError, IntegrityError
from .failover import PRIMARY, read_role
from .feed import Frames, Source
from .replica import pull
from .store import Store

__all__ = ["Follower", "LONG_POLL"]

LONG_POLL = 0.5  # seconds a round waits for the primary's log to grow (tokens are taken once per round: within ~0.5 s)
RETRY_UNAVAILABLE = 1.0
RETRY_REFUSED = 5.0


class Follower:
    """Pulls from source into the store at root until stopped; `status()` is safe to call from any thread."""

    def __init__(self, root: str | Path, source: Source, log=None):
        self.root = Path(root)
        self.source = source
        self._log = log or (lambda line: print(line, file=sys.stderr, flush=True))
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._state = {"seq": 0, "head": "", "log_end": 0, "primary_end": None, "primary_seq": None, "error": None,
                       "caught_up_at": None, "rounds": 0}  # fmt: skip
        self._thread = threading.Thread(target=self._run, name="imstore-follower", daemon=True)
        self.promoted = threading.Event()  # set once imstore promote made this store a primary: it pulls no more (R9)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def status(self) -> dict:
        """role, primary, head, lag (records, bytes, seconds) and the last error, as of now."""
        with self._lock:
            state = dict(self._state)
        lag_bytes = max(state["primary_end"] - state["log_end"], 0) if state["primary_end"] is not None else None
        lag_records = max(state["primary_seq"] - state["seq"], 0) if state["primary_seq"] is not None else None
        if lag_bytes == 0:
            lag_records = 0  # byte-identical up to the primary's end: nothing to wait for
        caught_up = state["caught_up_at"]
        lag_seconds = 0.0 if lag_bytes == 0 and state["error"] is None else (time.monotonic() - caught_up if caught_up else None)
        return {"role": "standby", "primary": self.source.location, "head": {"seq": state["seq"], "hash": state["head"]},
                "log_end": state["log_end"], "lag_records": lag_records, "lag_bytes": lag_bytes,
                "lag_seconds": round(lag_seconds, 3) if lag_seconds is not None else None, "error": state["error"],
                "rounds": state["rounds"]}  # fmt: skip

    def _update(self, **fields) -> None:
        with self._lock:
            self._state.update(fields)

    def _run(self) -> None:
        store = None
        described, described_at = None, 0.0
        while not self._stop.is_set():
            try:
                if read_role(self.root) == PRIMARY:  # imstore promote, seen within a round (LONG_POLL)
                    self._log(f"imstore serve: this store was promoted: it no longer follows {self.source.location}; it takes writes")
                    self.promoted.set()
                    break
                if store is None:
                    store = Store.open(self.root)
                    self._note_local(store)
                    described = None  # after a failure or at start: the full checks, divergence first
                if described is None or time.monotonic() - described_at >= LONG_POLL:
                    described_at = time.monotonic()  # the tokens: taken again at least this often
                    fresh = self.source.describe()
                else:
                    fresh = described
                result = pull(store, self.source, wait=LONG_POLL, on_answer=self._note_primary, described=fresh,
                              check_divergence=described is None, progress=self._progress_of(store))  # fmt: skip
                described = fresh
                self._note_local(store)
                with self._lock:
                    self._state["rounds"] += 1
                    if self._state["error"] is not None:
                        self._log(f"imstore serve: replication from {self.source.location} works again")
                    self._state["error"] = None
                    if self._state["primary_end"] is not None and result.log_end >= self._state["primary_end"]:
                        self._state["caught_up_at"] = time.monotonic()
            except ImstoreError as exc:
                self._failed(exc)
                if store is not None:
                    store.close()
                    store = None
                self._pause(RETRY_REFUSED if isinstance(exc, IntegrityError) else RETRY_UNAVAILABLE)
            except Exception as exc:  # a bug of ours must not end replication silently
                self._failed(exc)
                self._pause(RETRY_REFUSED)
        if store is not None:
            store.close()

    def _pause(self, seconds: float) -> None:
        """Wait before the next try, but look at the role file every LONG_POLL: a promotion (whose epoch
        record makes the primary's next frames fail the chain here) is noticed within a second, not at the retry."""
        deadline = time.monotonic() + seconds
        while not self._stop.is_set() and (left := deadline - time.monotonic()) > 0:
            try:
                if read_role(self.root) == PRIMARY:
                    return
            except ImstoreError:
                pass
            self._stop.wait(min(LONG_POLL, left))

    def _progress_of(self, store: Store):
        """After each round of a pull: the head moves in /healthz as frames arrive, not only when the pull ends."""
        return lambda _done, _total: self._note_local(store)

    def _failed(self, exc: BaseException) -> None:
        message = str(exc) or type(exc).__name__
        with self._lock:
            repeated = self._state["error"] == message
            self._state["error"] = message
        if not repeated:  # loudly, once per distinct failure (a primary that stays down is not a flood)
            self._log(f"imstore serve: replication from {self.source.location} stopped: {message}")

    def _note_primary(self, answer: Frames) -> None:
        self._update(primary_end=answer.log_end, primary_seq=answer.seq)

    def _note_local(self, store: Store) -> None:
        state = store.indexer.current().state()
        self._update(seq=state.seq, head=state.last_hash.hex() if state.seq else "", log_end=state.log_end)
