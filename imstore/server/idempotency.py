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

What makes a retry the same request (S4): the claim records a fingerprint of the
request's method, target and the headers or query that change its result
(`fingerprint`), and, once its body has arrived whole and before anything
commits, the BLAKE3 of the body. A retry with another fingerprint or another
body is refused (422), whether the first attempt was answered or its worker
died. A dead attempt with no body hash never reached its commit: the retry
simply runs. One with a body hash may have committed: the retry answers from
the log when it can find the record (puts, deletes) and says so when it cannot
(an import runs again, and what the first attempt stored counts as unchanged).

Durability: rows are committed with synchronous=NORMAL (WAL): they survive a
process crash (F10), not necessarily power loss at that instant.

Only ever the store's own ledger (D4): before each use the store's `config` is read
through a handle on the store directory and its store_id must be the one the worker
started with. A directory that is not that store (an empty mount point, a store
renamed away, another store) gets nothing created in it and nothing read from it:
the request is 503 until the store is back. The ledger is created in the directory
so checked (by its handle, not by path), opened by path only when it exists
(`mode=rw`), and reopened when the path names another file than the one open. The
ledger records the store_id it belongs to; one that belongs to another store (a copied
file) has its rows dropped before use. Any SQLite failure is the store being
unavailable, named by its cause (a full disk, an I/O error), never a side effect of it.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from .. import layout
from ..errors import IdempotencyKeyReused, ImstoreError, InvalidInput, RequestInProgress, Unavailable, from_os_error
from ..hashing import blake3
from ..index import use_wal

__all__ = ["IdempotencyLedger", "Claim", "validate_idempotency_key", "LEDGER_NAME", "fingerprint", "run_once"]

LEDGER_NAME = layout.LEDGER
EXPIRY_SECONDS = 24 * 3600


@dataclass(frozen=True)
class Claim:
    """What a request may do: 'new' (go ahead), 'done' (replay `answer`), 'orphan' (look in the log after `seq_before`)."""

    state: str
    seq_before: int
    answer: tuple[int, dict] | None = None
    body: str | None = None  # the BLAKE3 of the first attempt's body, once it had arrived whole (before any commit)


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
    """One connection to the ledger of one store (use one per thread), checked before every use."""

    def __init__(self, store_root: str | os.PathLike, owner_lock: str, store_id: str):
        self.root = Path(store_root)
        self.path = self.root / LEDGER_NAME
        self.owner_lock = owner_lock
        self.store_id = store_id
        self.db: sqlite3.Connection | None = None
        self._identity: tuple[int, int] | None = None

    def close(self) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None

    # ------------------------------------------------------------ the store's own ledger, or none
    def _open(self) -> sqlite3.Connection:
        """The connection to this store's ledger, after checking the directory is still this store."""
        try:
            directory = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise _away(self.root, exc.strerror or str(exc)) from None
        try:
            self._check_config(directory)
            try:
                status = os.stat(LEDGER_NAME, dir_fd=directory)
            except FileNotFoundError:
                # Made in the directory just checked, through its handle: by path it could be another by now.
                os.close(os.open(LEDGER_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600, dir_fd=directory))
                status = os.stat(LEDGER_NAME, dir_fd=directory)
        except OSError as exc:
            raise from_os_error(exc, f"cannot write: the store's Idempotency-Key ledger {self.path}") from None
        finally:
            os.close(directory)
        identity = (status.st_dev, status.st_ino)
        if self.db is not None and identity == self._identity:
            return self.db
        self.close()
        try:
            # mode=rw: SQLite never creates the file (nor its -wal, -shm) where the path leads now.
            db = sqlite3.connect(f"file:{quote(str(self.path))}?mode=rw", uri=True, timeout=30, isolation_level=None)
        except sqlite3.Error as exc:
            raise _unavailable(exc, self.path) from None
        try:
            self._prepare(db)
            if _identity(self.path) != identity:
                raise _away(self.root, "it changed while its ledger was being opened")
        except BaseException as exc:
            db.close()
            if isinstance(exc, sqlite3.Error):
                raise _unavailable(exc, self.path) from None
            raise
        self.db, self._identity = db, identity
        return db

    def _check_config(self, directory: int) -> None:
        try:
            handle = os.open(layout.CONFIG, os.O_RDONLY | os.O_CLOEXEC, dir_fd=directory)
        except (FileNotFoundError, NotADirectoryError):
            raise _away(self.root, f"it holds no store now (no {layout.CONFIG}: unmounted or moved?)") from None
        with os.fdopen(handle, "rb") as config_file:
            raw = config_file.read()
        found = layout.parse_config(raw, self.root / layout.CONFIG)["store_id"]
        if found != self.store_id:
            raise _away(self.root, f"it holds another store now (id {found}, not {self.store_id})")

    def _prepare(self, db: sqlite3.Connection) -> None:
        use_wal(db)
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute(
            "CREATE TABLE IF NOT EXISTS requests (id TEXT PRIMARY KEY, method TEXT, key TEXT, owner TEXT,"
            " seq_before INTEGER, status INTEGER, answer TEXT, created REAL, request TEXT, body TEXT)"
        )
        if "body" not in {column[1] for column in db.execute("PRAGMA table_info(requests)")}:
            _add_fingerprint_columns(db)
        db.execute("CREATE TABLE IF NOT EXISTS ledger (id INTEGER PRIMARY KEY CHECK (id = 1), store_id TEXT NOT NULL)")
        row = db.execute("SELECT store_id FROM ledger WHERE id = 1").fetchone()
        if row is not None and row[0] == self.store_id:
            return
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute("SELECT store_id FROM ledger WHERE id = 1").fetchone()
            if row is None or row[0] != self.store_id:
                if row is not None:  # another store's ledger: its requests are not this store's
                    db.execute("DELETE FROM requests")
                db.execute("INSERT OR REPLACE INTO ledger VALUES (1, ?)", (self.store_id,))
            db.execute("COMMIT")
        except BaseException:
            _rollback(db)
            raise

    # ------------------------------------------------------------ requests
    def claim(self, request_id: str, method: str, key: str, seq_now: int | Callable[[], int], request: str | None = None) -> Claim:
        """Claim request_id; seq_now is the log's seq (a callable is asked only once the store is checked).

        request is the request's fingerprint: a row with another one is another request (422)."""
        db = self._open()
        if callable(seq_now):
            seq_now = seq_now()
        try:
            db.execute("BEGIN IMMEDIATE")
            row = db.execute(
                "SELECT method, key, owner, seq_before, status, answer, request, body FROM requests WHERE id = ?", (request_id,)
            ).fetchone()
            if row is None:
                db.execute(
                    "INSERT INTO requests (id, method, key, owner, seq_before, created, request) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (request_id, method, key, self.owner_lock, seq_now, time.time(), request),
                )
                claim = Claim("new", seq_now)
            else:
                old_method, old_key, owner, seq_before, status, answer, old_request, body = row
                if (old_method, old_key) != (method, key):
                    raise IdempotencyKeyReused(f"Idempotency-Key {request_id!r} was used for {old_method} of another key")
                if None not in (old_request, request) and old_request != request:
                    raise IdempotencyKeyReused(f"Idempotency-Key {request_id!r} was used for {method} of {key!r} with other headers")
                if status is not None:
                    claim = Claim("done", seq_before, (status, json.loads(answer)), body)
                elif owner_alive(owner):
                    raise RequestInProgress(f"a request with Idempotency-Key {request_id!r} is still in progress; retry later")
                else:
                    db.execute("UPDATE requests SET owner = ? WHERE id = ?", (self.owner_lock, request_id))
                    claim = Claim("orphan", seq_before, None, body)
            db.execute("COMMIT")
        except BaseException as exc:
            _rollback(db)  # SQLite may have rolled back already (a full disk does): the cause is exc, never the rollback
            if isinstance(exc, sqlite3.Error):
                raise _unavailable(exc, self.path) from None
            raise
        return claim

    def finish(self, request_id: str, status: int, answer: dict) -> None:
        """Remember the answer (and drop expired rows now and then)."""
        db = self._open()
        try:
            db.execute("UPDATE requests SET status = ?, answer = ?, owner = NULL WHERE id = ?", (status, json.dumps(answer), request_id))
            if os.urandom(1)[0] < 2:
                db.execute("DELETE FROM requests WHERE created < ?", (time.time() - EXPIRY_SECONDS,))
        except sqlite3.Error as exc:
            raise _unavailable(exc, self.path) from None

    def record_body(self, request_id: str, digest: str) -> None:
        """The request's body has arrived whole: remember its hash before anything commits (see above)."""
        db = self._open()
        try:
            db.execute("UPDATE requests SET body = ? WHERE id = ? AND body IS NULL AND status IS NULL", (digest, request_id))
        except sqlite3.Error as exc:
            raise _unavailable(exc, self.path) from None

    def release(self, request_id: str) -> None:
        """The request failed: a retry must look in the log (the record may or may not be there)."""
        db = self._open()
        try:
            db.execute("UPDATE requests SET owner = NULL WHERE id = ? AND status IS NULL", (request_id,))
        except sqlite3.Error as exc:
            raise _unavailable(exc, self.path) from None


def fingerprint(method: str, target: str, fields: dict) -> str:
    """What makes two requests one (S4): method, target, and the headers or query that change the result."""
    text = json.dumps([method, target, fields], sort_keys=True, ensure_ascii=False, default=str)
    return blake3(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def hashed_body(chunks: Iterable[bytes], ended: Callable[[str], None]) -> Iterator[bytes]:
    """The chunks, passed on; once the last has been taken, ended(the BLAKE3 of them all) (before their reader goes on)."""
    hasher = blake3()
    for chunk in chunks:
        hasher.update(chunk)
        yield chunk
    ended(hasher.hexdigest())


def run_once(ledger: IdempotencyLedger, request_id: str, method: str, target: str, fields: dict,
             chunks: Iterable[bytes] | None, seq_now: Callable[[], int], work, warn: Callable[[str], None]):  # fmt: skip
    """work(claim, body) once per Idempotency-Key: a retry of the same request gets the first answer back.

    chunks is the request body (None: it has none); work must read body to its end before it commits,
    so the body's hash is in the ledger first. Another request under the same key is refused (422)."""
    claim = ledger.claim(request_id, method, target, seq_now, fingerprint(method, target, fields))

    def body_ended(digest: str) -> None:
        if claim.body is not None and claim.body != digest:
            raise IdempotencyKeyReused(f"Idempotency-Key {request_id!r} was used for {method} of {target!r} with another body")
        if claim.body is None and claim.state != "done":
            ledger.record_body(request_id, digest)  # before the commit: a retry after a crash can tell its request

    body = hashed_body(() if chunks is None else chunks, body_ended)
    if claim.state == "done":
        for _chunk in body:  # the retry's bytes decide whether it is the request that was answered
            pass
        assert claim.answer is not None
        return claim.answer
    try:
        if chunks is None:  # no body: its (empty) hash is recorded before the work, like any body's
            for _chunk in body:
                pass
        status, document = work(claim, body)
    except BaseException:
        _forget(ledger, request_id, warn)  # the work's own error is the answer, not the ledger's
        raise
    try:
        ledger.finish(request_id, status, document)
    except ImstoreError as exc:
        # The write is done and its answer known: give it. A retry finds the claim released (then the log
        # answers it) or, if even that failed, held by this worker (409) until the worker goes.
        warn(f"cannot remember the answer to Idempotency-Key {request_id!r}: {exc}")
        _forget(ledger, request_id, warn)
    return status, document


def _forget(ledger: IdempotencyLedger, request_id: str, warn: Callable[[str], None]) -> None:
    try:
        ledger.release(request_id)
    except ImstoreError as exc:
        warn(f"cannot release Idempotency-Key {request_id!r}: {exc}")


def _add_fingerprint_columns(db: sqlite3.Connection) -> None:
    """A ledger from before S4's fingerprints: add the columns (its rows keep NULL: only their key is compared)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        if "body" not in {column[1] for column in db.execute("PRAGMA table_info(requests)")}:
            db.execute("ALTER TABLE requests ADD COLUMN request TEXT")
            db.execute("ALTER TABLE requests ADD COLUMN body TEXT")
        db.execute("COMMIT")
    except BaseException:
        _rollback(db)
        raise


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        status = os.stat(path)
    except OSError:
        return None
    return status.st_dev, status.st_ino


def _rollback(db: sqlite3.Connection) -> None:
    if db.in_transaction:
        try:
            db.execute("ROLLBACK")
        except sqlite3.Error:
            pass


def _away(root: Path, why: str) -> Unavailable:
    return Unavailable(f"cannot write: the store is unavailable: {root}: {why}")


# What SQLite's result codes mean for the store: the cause a client should hear (D9).
_CAUSES = {
    "SQLITE_FULL": "the disk is full",
    "SQLITE_READONLY": "the store is read-only",
    "SQLITE_CANTOPEN": "the ledger cannot be opened",
    "SQLITE_BUSY": "the ledger stayed locked by another process",
    "SQLITE_LOCKED": "the ledger stayed locked",
    "SQLITE_CORRUPT": "the ledger is damaged (remove it: it only remembers pending retries)",
    "SQLITE_NOTADB": "the ledger is damaged (remove it: it only remembers pending retries)",
}


def _unavailable(error: sqlite3.Error, path: Path) -> Unavailable:
    """The store's Unavailable for a failure of its ledger, by cause: a full disk says so."""
    primary = "_".join((getattr(error, "sqlite_errorname", "") or "").split("_")[:2])  # SQLITE_IOERR_WRITE: SQLITE_IOERR
    cause = _CAUSES.get(primary) or ("an I/O error" if primary == "SQLITE_IOERR" else "the ledger failed")
    return Unavailable(f"cannot write: {cause} (the store's Idempotency-Key ledger {path}: {error})")
