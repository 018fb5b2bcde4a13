"""BLAKE3 helpers and object ids (64 lowercase hex digits)."""

from __future__ import annotations

import re

from blake3 import blake3

from .errors import InvalidHash

__all__ = ["blake3", "hash_bytes", "checksum16", "validate_object_id", "validate_prefix", "EMPTY_HASH"]

OBJECT_ID_LEN = 64
MIN_PREFIX_LEN = 8
_HEX = re.compile(r"[0-9a-f]+\Z")


def hash_bytes(data: bytes) -> str:
    """Hex BLAKE3-256 of data: the id of an object with these bytes."""
    return blake3(data).hexdigest()


def checksum16(data: bytes) -> bytes:
    """16-byte BLAKE3 of data: the per-frame checksum in the log."""
    return blake3(data).digest(length=16)


def validate_object_id(object_id: str) -> str:
    """Return object_id if it is a full hex id; raise InvalidHash otherwise.

    Called before an id becomes part of a path, so '../' can never get there.
    """
    if not isinstance(object_id, str) or len(object_id) != OBJECT_ID_LEN or not _HEX.match(object_id):
        raise InvalidHash(f"not a full object hash (64 lowercase hex digits): {object_id!r}")
    return object_id


def validate_prefix(prefix: str) -> str:
    """Normalise a hash or hash prefix (8 to 64 hex digits) to lowercase."""
    lowered = prefix.strip().lower() if isinstance(prefix, str) else ""
    if not (MIN_PREFIX_LEN <= len(lowered) <= OBJECT_ID_LEN) or not _HEX.match(lowered):
        raise InvalidHash(f"a hash is {MIN_PREFIX_LEN} to {OBJECT_ID_LEN} hex digits: {prefix!r}")
    return lowered


EMPTY_HASH = hash_bytes(b"")
