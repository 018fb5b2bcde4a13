"""Buckets over a store's keys: a bucket is a key's first segment (`photos/2024/a.jpg` is in `photos`).

CreateBucket writes an empty version of the key `BUCKET/` (its marker), so an empty bucket is
durable and in the log like every change; a bucket also exists while any key starts with `BUCKET/`
(keys put through the CLI). The marker's S3 name would be the empty key, which S3 cannot name, so
no S3 listing shows it. A bucket's CORS configuration is metadata on later marker versions (cors.py).
Pure functions over the Store API: no aiohttp.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from ...model import Version
from .xml import S3Error

__all__ = ["valid_bucket", "check_bucket", "marker_key", "bucket_exists", "buckets", "bucket_stats", "MARKER_META", "LAST_CHAR"]

# S3's rules for new bucket names (no upper case, no underscores): 3-63 of a-z 0-9 . -
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_IP = re.compile(r"^\d+\.\d+\.\d+\.\d+$")
MARKER_META = {"s3-bucket": "created"}
LAST_CHAR = "\U0010ffff"  # after every key that starts with a given prefix (keys sort by code point)
_SCAN_LIMIT = 100_000  # buckets listed at most (each costs one index query)


def valid_bucket(name: str) -> bool:
    """S3's DNS-compatible rule: labels between dots start and end with a letter or digit."""
    return bool(_BUCKET.match(name)) and not any(pair in name for pair in ("..", "-.", ".-")) and not _IP.match(name)


def check_bucket(name: str) -> str:
    if not valid_bucket(name):
        raise S3Error(400, "InvalidBucketName", "The specified bucket is not valid.")
    return name


def marker_key(bucket: str) -> str:
    return bucket + "/"


def bucket_exists(store, bucket: str) -> bool:
    return bool(store.ls_page(marker_key(bucket), True, None, None, 1))


def buckets(store, after_bucket: str = "") -> Iterator[tuple[str, Version]]:
    """(bucket, its first key's latest version) for every valid bucket name after after_bucket, skipping from
    bucket to bucket."""
    after = after_bucket + "/" + LAST_CHAR if after_bucket else None
    for _ in range(_SCAN_LIMIT):
        page = store.ls_page("", True, after, None, 1)
        if not page:
            return
        first = page[0]
        segment, slash, _ = first.key.partition("/")
        if slash and valid_bucket(segment):
            if first.key == marker_key(segment) and first.version > 1:  # a marker changed since (CORS, S3-25): created at v1
                first = store.resolve(first.key, 1)
            yield segment, first
        # The next key past every key that starts with this first segment (and its slash).
        after = segment + ("/" if slash else "") + LAST_CHAR


def bucket_stats(store, bucket: str, page: int = 10_000) -> tuple[int, int]:
    """(objects, bytes) of the bucket's current versions, delete markers left out: what ListObjects shows, summed
    (HeadBucket ?read-stats=true, RGW's x-rgw-object-count and x-rgw-bytes-used; S3-24). Read page by page."""
    count = size = 0
    after = None
    while True:
        versions = store.ls_page(marker_key(bucket), False, after, None, page)
        for version in versions:
            if version.key != marker_key(bucket):
                count, size = count + 1, size + version.size
        if len(versions) < page:
            return count, size
        after = versions[-1].key
