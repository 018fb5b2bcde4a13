"""If-Match on a write (H1): `*` or the ETags a key read gave, decided atomically.

A key's ETag names one of its versions (protocol.key_etag), and a version never
changes. So "the key's latest is a version the client named" is the store's own
if_version condition, which the commit checks under the log lock: the worker
reads the latest version, decides whether it matches, and writes with
if_version set to it. No read-then-write race: if another write lands in
between, the commit refuses (412), and the check runs again on the new latest
(a few times, for `*`, which any live version matches).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from ..errors import NotFound, PreconditionFailed
from ..model import Version
from ..store import Store
from .protocol import key_etag

__all__ = ["conditional_write", "check_if_match"]

ATTEMPTS = 3  # rounds of "read the latest, commit if still it" when writers of the same key race
T = TypeVar("T")


def check_if_match(store: Store, key: str, if_match: str | tuple[tuple[int, str], ...]) -> Version:
    """The key's latest live version if If-Match holds for it now, else PreconditionFailed."""
    try:
        latest = store.resolve(key)
    except NotFound as exc:  # no key, or deleted: If-Match needs a current representation
        raise PreconditionFailed(f"If-Match: key {key!r} has no live version ({exc.title})") from None
    if if_match == "*" or (latest.version, latest.hash) in if_match:
        return latest
    raise PreconditionFailed(f'If-Match: key {key!r} is at "{key_etag(latest.version, latest.hash or "")}", not one of the tags given')


def conditional_write(store: Store, key: str, conditions: dict, write: Callable[[int | None], T]) -> T:
    """write(if_version) with the request's conditions; If-Match (* or ETags) becomes the matching latest's number."""
    if_match = conditions.get("if_match")
    if if_match is None:
        return write(conditions.get("if_version"))
    for attempt in range(ATTEMPTS):
        latest = check_if_match(store, key, if_match)
        try:
            return write(latest.version)
        except PreconditionFailed:
            if attempt == ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")
