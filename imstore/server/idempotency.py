"""Memory of Idempotency-Key requests, so a retried PUT or DELETE makes no second version.

Where it lives: a small SQLite file in the store directory (`idempotency.sqlite`),
shared by every worker and every server on that store, so it survives a worker
being killed, a restart of serve, and a retry that lands on another worker or
another server. It is disposable: deleting it only forgets pending retries.

How a killed worker is handled without touching the log format: a request first
*claims* its key (a row with the log's seq before it, and the path of a lock file
its worker holds with flock for as long as it lives). When it finishes, the row
keeps the answer, which a retry gets back. When a retry finds a row whose owner
is dead (the flock is free), the earlier attempt may or may not have committed:
the retry looks in the log after the remembered seq for a record of the same key
and (for a put) the same content, and answers with it if it is there; only if it
is not does it write. The claim is a compare-and-set in one SQLite transaction,
so two retries cannot both write. Rows expire after a day.

Durability: rows are committed with synchronous=NORMAL (WAL): they survive a
process crash (F10), not necessarily power loss at that instant.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from .. import layout
from ..errors import IdempotencyKeyReused, InvalidInput, RequestInProgress

__all__ = ["IdempotencyLedger", "Claim", "validate_idempotency_key", "LEDGER_NAME"]

LEDGER_NAME = layout.LEDGER
EXPIRY_SECONDS = 24 * 3600


@dataclass(frozen=True)
class Claim:
    """What a request may do: 'new' (go ahead), 'done' (replay `answer`), 'orphan' (look in the log after `seq_before`)."""

    state: str
    seq_before: int
    answer: tuple[int, dict] | None = None


def validate_idempotency_key(value: str) -> str:
    if not 1 <= len(value) <= 255 or not value.isascii() or not value.isprintable():
        raise InvalidInput("an Idempotency-Key is 1-255 printable ASCII characters")
    return value


def owner_alive(lock_path: str | None) -> bool:
    """True while the worker that holds lock_path (flock) is alive."""
    if not lock_path:
        return False
    try:
        fd = os.open(lock_path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


class IdempotencyLedger:
    """One connection to the ledger (use one per thread)."""

    def __init__(self, store_root: str | os.PathLike, owner_lock: str):
        self.path = Path(store_root) / LEDGER_NAME
        self.owner_lock = owner_lock
        self.db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS requests (id TEXT PRIMARY KEY, method TEXT, key TEXT, owner TEXT,"
            " seq_before INTEGER, status INTEGER, answer TEXT, created REAL)"
        )

    def close(self) -> None:
        self.db.close()

    def claim(self, request_id: str, method: str, key: str, seq_now: int) -> Claim:
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute("SELECT method, key, owner, seq_before, status, answer FROM requests WHERE id = ?", (request_id,)).fetchone()
            if row is None:
                db.execute(
                    "INSERT INTO requests (id, method, key, owner, seq_before, created) VALUES (?, ?, ?, ?, ?, ?)",
                    (request_id, method, key, self.owner_lock, seq_now, time.time()),
                )
                claim = Claim("new", seq_now)
            else:
                old_method, old_key, owner, seq_before, status, answer = row
                if (old_method, old_key) != (method, key):
                    raise IdempotencyKeyReused(f"Idempotency-Key {request_id!r} was used for {old_method} of another key")
                if status is not None:
                    claim = Claim("done", seq_before, (status, json.loads(answer)))
                elif owner_alive(owner):
                    raise RequestInProgress(f"a request with Idempotency-Key {request_id!r} is still in progress; retry later")
                else:
                    db.execute("UPDATE requests SET owner = ? WHERE id = ?", (self.owner_lock, request_id))
                    claim = Claim("orphan", seq_before)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return claim

    def finish(self, request_id: str, status: int, answer: dict) -> None:
        """Remember the answer (and drop expired rows now and then)."""
        self.db.execute(
            "UPDATE requests SET status = ?, answer = ?, owner = NULL WHERE id = ?", (status, json.dumps(answer), request_id)
        )
        if os.urandom(1)[0] < 2:
            self.db.execute("DELETE FROM requests WHERE created < ?", (time.time() - EXPIRY_SECONDS,))

    def release(self, request_id: str) -> None:
        """The request failed: a retry must look in the log (the record may or may not be there)."""
        self.db.execute("UPDATE requests SET owner = NULL WHERE id = ? AND status IS NULL", (request_id,))
