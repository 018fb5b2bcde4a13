"""One small error hierarchy. Each error knows its CLI exit code and HTTP status.

The CLI and the server map errors to codes in exactly one place each, by reading
these attributes; nothing else decides what an error means to the outside.
"""

from __future__ import annotations

import errno

__all__ = [
    "ImstoreError",
    "UsageError",
    "InvalidKey",
    "InvalidVersion",
    "InvalidHash",
    "InvalidTime",
    "InvalidInput",
    "NotFound",
    "KeyNotFound",
    "KeyDeleted",
    "VersionNotFound",
    "ObjectNotFound",
    "AmbiguousPrefix",
    "PreconditionFailed",
    "IntegrityError",
    "CorruptLog",
    "CorruptObject",
    "CorruptStore",
    "CorruptIndex",
    "ProofFailed",
    "Diverged",
    "BadUpstream",
    "Unavailable",
    "NoStore",
    "OutcomeUnknown",
    "NotReplicated",
    "NotAuthorised",
    "Forbidden",
    "BodyTooLarge",
    "UnsupportedMediaType",
    "BodyIncomplete",
    "ClientTooSlow",
    "RequestInProgress",
    "IdempotencyKeyReused",
    "from_os_error",
]


class ImstoreError(Exception):
    """Base of every error imstore raises on purpose."""

    exit_code = 1
    http_status = 500
    title = "error"


class UsageError(ImstoreError):
    exit_code = 2
    http_status = 400
    title = "bad request"


class InvalidKey(UsageError):
    title = "invalid key"


class InvalidVersion(UsageError):
    title = "invalid version"


class InvalidHash(UsageError):
    title = "invalid hash"


class InvalidTime(UsageError):
    title = "invalid time"


class InvalidInput(UsageError):
    title = "invalid input"


class NotFound(ImstoreError):
    exit_code = 3
    http_status = 404
    title = "not found"


class KeyNotFound(NotFound):
    title = "key not found"


class KeyDeleted(NotFound):
    title = "key deleted"


class VersionNotFound(NotFound):
    title = "version not found"


class ObjectNotFound(NotFound):
    title = "object not found"


class AmbiguousPrefix(UsageError):
    title = "ambiguous hash prefix"


class PreconditionFailed(ImstoreError):
    exit_code = 4
    http_status = 412
    title = "precondition failed"


class IntegrityError(ImstoreError):
    """Stored bytes do not match their checksum or hash: never served, always reported."""

    exit_code = 5
    http_status = 500
    title = "integrity error"


class CorruptLog(IntegrityError):
    title = "corrupt log"


class CorruptObject(IntegrityError):
    title = "corrupt object"


class CorruptIndex(IntegrityError):
    """The index names a record the log does not hold there: it was altered or damaged (reindex rebuilds it)."""

    title = "corrupt index"


class CorruptStore(IntegrityError):
    """A file of the store's own (its config) is damaged."""

    title = "corrupt store"


class ProofFailed(IntegrityError):
    """A Merkle proof, a checkpoint or its signature does not check out: the log differs from what was proven."""

    title = "proof failed"
class Diverged(IntegrityError):
    """A replication source whose history does not contain this store's head: nothing is taken from it."""

    http_status = 409
    title = "diverged"


class BadUpstream(IntegrityError):
    """A replication source sent frames or objects that fail their checks (a gap, a broken chain, wrong bytes)."""

    http_status = 502
    title = "bad upstream"


class Unavailable(ImstoreError):
    """The store cannot be read or written right now (disk full, I/O error, gone)."""

    exit_code = 6
    http_status = 503
    title = "store unavailable"


class OutcomeUnknown(Unavailable):
    """A write failed at a point where it may or may not have been committed: the caller must look."""

    title = "outcome unknown"


class NotReplicated(Unavailable):
    """Sync mode: the write is committed on the primary but not confirmed durable on enough standbys in time.

    The record stays (the log is append-only); a retry with the same Idempotency-Key
    answers with the same version once it is replicated."""

    title = "committed, not confirmed replicated"


class NoStore(ImstoreError):
    exit_code = 10
    http_status = 503
    title = "no store"


class NotAuthorised(ImstoreError):
    exit_code = 12
    http_status = 401
    title = "not authorised"


class Forbidden(NotAuthorised):
    http_status = 403
    title = "forbidden"


# ---- HTTP-only conditions of `imstore serve` (the CLI sees them only through --remote)
class BodyTooLarge(UsageError):
    http_status = 413
    title = "request body too large"


class UnsupportedMediaType(UsageError):
    http_status = 415
    title = "unsupported media type"


class BodyIncomplete(ImstoreError):
    """The request body ended early, broke off or stopped arriving: nothing is stored."""

    http_status = 400
    title = "request body incomplete"


class ClientTooSlow(BodyIncomplete):
    http_status = 408
    title = "request timeout"


class RequestInProgress(ImstoreError):
    """A request with this Idempotency-Key is still running: retry later."""

    http_status = 409
    title = "request in progress"


class IdempotencyKeyReused(UsageError):
    http_status = 422
    title = "idempotency key reused"


# Errors that mean "the storage underneath failed", as opposed to a bug of ours.
_UNAVAILABLE_ERRNOS = {
    errno.ENOSPC,
    errno.EMFILE,  # out of file descriptors: the process cannot reach the store now (503, retry)
    errno.ENFILE,
    errno.ENOMEM,
    errno.EIO,
    errno.EROFS,
    errno.EFBIG,
    errno.EDQUOT,
    errno.ENOENT,
    errno.ENOTDIR,
    errno.EISDIR,
    errno.EACCES,
    errno.EPERM,
    errno.ESTALE,
    errno.ENXIO,
    errno.ENODEV,
}


def from_os_error(exc: OSError, what: str) -> ImstoreError:
    """Translate an OSError met while touching the store into an ImstoreError."""
    reason = exc.strerror or str(exc)
    if exc.errno in _UNAVAILABLE_ERRNOS:
        return Unavailable(f"{what}: {reason}")
    return ImstoreError(f"{what}: {reason}")
