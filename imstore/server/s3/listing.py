"""S3 listings of one bucket: ListObjects (v1), ListObjectsV2 and ListObjectVersions, as XML.

Keys are walked in order through the Store's paged listing; a delimiter folds the keys under a
common prefix into one entry and jumps past them, so a listing costs one index query per page
and per common prefix, not per key under it.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from urllib.parse import quote

from ...model import Version
from .buckets import LAST_CHAR, marker_key
from .xml import S3Error, document, iso_time

__all__ = ["list_objects", "list_object_versions", "etag_of", "MAX_KEYS"]

MAX_KEYS = 1000
_PAGE = 1000
_MAX_QUERIES = 100_000


def etag_of(version: Version) -> str:
    """The S3 ETag: the MD5 an S3 upload was given (multipart: md5-of-md5s-N), else the BLAKE3 id (64 hex)."""
    return f'"{version.meta.get("s3-etag") or version.hash}"'


def _max_keys(query: Mapping[str, str]) -> int:
    text = query.get("max-keys", str(MAX_KEYS))
    if not text.isdigit():
        raise S3Error(400, "InvalidArgument", "max-keys must be a non-negative integer")
    return min(int(text), MAX_KEYS)


def walk(store, bucket: str, prefix: str, delimiter: str, after: str, limit: int, include_deleted: bool):
    """Up to limit entries after the S3 key `after`: ("key", version) or ("prefix", common prefix); and truncated."""
    base = marker_key(bucket)
    entries: list[tuple[str, object]] = []
    cursor = base + after if after else None
    for _ in range(_MAX_QUERIES):
        page = store.ls_page(base + prefix, include_deleted, cursor, None, _PAGE)
        if not page:
            return entries, False
        for version in page:
            name = version.key[len(base) :]
            cursor = version.key
            if not name:
                continue  # the bucket's marker
            if delimiter:
                cut = name.find(delimiter, len(prefix))
                if cut >= 0:
                    common = name[: cut + len(delimiter)]
                    cursor = base + common + LAST_CHAR
                    if after and common <= after:
                        break  # the marker is this common prefix (or inside it): already listed; page on past it
                    if len(entries) == limit:
                        return entries, True
                    entries.append(("prefix", common))
                    break  # page again from past the common prefix
            if len(entries) == limit:
                return entries, True
            entries.append(("key", version))
        else:
            if len(page) < _PAGE:
                return entries, False
    raise S3Error(503, "SlowDown", "the listing needs too many index reads; narrow it with a prefix")


def _encode(name: str, url: bool) -> str:
    return quote(name, safe="/") if url else name


OWNER = (("ID", "imstore"), ("DisplayName", "imstore"))  # one owner: every key holder sees every bucket


def _contents(version: Version, name: str, url: bool, owner: bool) -> tuple:
    return (("Key", _encode(name, url)), ("LastModified", iso_time(version.time_ns)), ("ETag", etag_of(version)),
            ("Size", version.size), ("StorageClass", "STANDARD"), ("Owner", OWNER if owner else None))  # fmt: skip


def list_objects(store, bucket: str, query: Mapping[str, str], v2: bool) -> bytes:
    prefix, delimiter = query.get("prefix", ""), query.get("delimiter", "")
    if delimiter and query.get("allow-unordered") == "true":  # RGW's extension: ordered is one unordered answer (S3-24)
        raise S3Error(400, "InvalidArgument", "allow-unordered cannot be used with a delimiter")
    url = query.get("encoding-type") == "url"
    limit = _max_keys(query)
    if v2:
        token = query.get("continuation-token")
        after = _decode_token(token) if token else query.get("start-after", "")
    else:
        after = query.get("marker", "")
    entries, truncated = walk(store, bucket, prefix, delimiter, after, limit, False) if limit else ([], False)
    owner = not v2 or query.get("fetch-owner") == "true"
    keys = [("Contents", _contents(v, v.key[len(bucket) + 1 :], url, owner)) for kind, v in entries if kind == "key"]  # type: ignore[union-attr]
    prefixes = [("CommonPrefixes", (("Prefix", _encode(str(p), url)),)) for kind, p in entries if kind == "prefix"]
    last = None
    if entries:
        kind, value = entries[-1]
        last = value.key[len(bucket) + 1 :] if kind == "key" else value  # type: ignore[union-attr]
    fields: list[tuple[str, object]] = [("Name", bucket), ("Prefix", _encode(prefix, url))]
    if v2:
        fields += [("KeyCount", len(entries)), ("MaxKeys", limit), ("Delimiter", _encode(delimiter, url) if delimiter else None),
                   ("IsTruncated", truncated), ("ContinuationToken", query.get("continuation-token")),
                   ("NextContinuationToken", _encode_token(str(last)) if truncated and last is not None else None),
                   ("StartAfter", _encode(query["start-after"], url) if "start-after" in query else None)]  # fmt: skip
    else:
        fields += [("Marker", _encode(after, url)), ("MaxKeys", limit), ("Delimiter", _encode(delimiter, url) if delimiter else None),
                   ("IsTruncated", truncated),
                   ("NextMarker", _encode(str(last), url) if truncated and delimiter and last is not None else None)]  # fmt: skip
    fields += [("EncodingType", "url" if url else None), ("Contents", keys), ("CommonPrefixes", prefixes)]
    return document("ListBucketResult", fields)


def _encode_token(key: str) -> str:
    return base64.urlsafe_b64encode(key.encode("utf-8")).decode()


def _decode_token(token: str) -> str:
    try:
        return base64.urlsafe_b64decode(token.encode()).decode("utf-8")
    except ValueError:
        raise S3Error(400, "InvalidArgument", "The continuation token provided is incorrect") from None


def list_object_versions(store, bucket: str, query: Mapping[str, str]) -> bytes:
    """Every version of every key (newest first per key), delete markers included; paged by key and version markers."""
    prefix, delimiter = query.get("prefix", ""), query.get("delimiter", "")
    url = query.get("encoding-type") == "url"
    limit = _max_keys(query)
    key_marker, version_marker = query.get("key-marker", ""), query.get("version-id-marker", "")
    rows: list[tuple[str, object]] = []
    last: tuple[str, str] | None = None
    pending: list[tuple[str, object, int]] = []  # (kind, value, versions older than this number; 0: all)
    if key_marker and version_marker.isdigit() and key_marker.startswith(prefix):
        pending.append(("resume", key_marker, int(version_marker)))
    entries, more = walk(store, bucket, prefix, delimiter, key_marker, limit + 1, True) if limit else ([], False)
    pending += [(kind, value, 0) for kind, value in entries]
    truncated = False
    for kind, value, below in pending:
        if kind == "prefix":
            if len(rows) == limit:
                truncated = True
                break
            rows.append(("CommonPrefixes", (("Prefix", _encode(str(value), url)),)))
            last = (str(value), "")
            continue
        name = str(value) if kind == "resume" else value.key[len(bucket) + 1 :]  # type: ignore[union-attr]
        history = [v for v in reversed(_history(store, marker_key(bucket) + name)) if not below or v.version < below]
        for position, version in enumerate(history):
            if len(rows) == limit:
                truncated = True
                break
            rows.append(_version_row(version, name, position == 0 and not below, url))
            last = (name, str(version.version))
        if truncated:
            break
    fields: list[tuple[str, object]] = [
        ("Name", bucket), ("Prefix", _encode(prefix, url)), ("KeyMarker", _encode(key_marker, url)),
        ("VersionIdMarker", version_marker), ("MaxKeys", limit), ("Delimiter", _encode(delimiter, url) if delimiter else None),
        ("IsTruncated", truncated),
        ("NextKeyMarker", _encode(last[0], url) if truncated and last else None),
        ("NextVersionIdMarker", last[1] if truncated and last and last[1] else None),
        ("EncodingType", "url" if url else None),
    ]  # fmt: skip
    versions = [row for row in rows if row[0] in ("Version", "DeleteMarker")]
    return document("ListVersionsResult", fields + [("", versions), ("CommonPrefixes", [r for r in rows if r[0] == "CommonPrefixes"])])


def _history(store, key: str) -> list[Version]:
    from ...errors import KeyNotFound

    try:
        return store.history(key)
    except KeyNotFound:
        return []


def _version_row(version: Version, name: str, latest: bool, url: bool) -> tuple[str, tuple]:
    common = (("Key", _encode(name, url)), ("VersionId", str(version.version)), ("IsLatest", latest),
              ("LastModified", iso_time(version.time_ns)))  # fmt: skip
    if version.deleted:
        return "DeleteMarker", common + (("Owner", OWNER),)
    return "Version", common + (("ETag", etag_of(version)), ("Size", version.size), ("StorageClass", "STANDARD"), ("Owner", OWNER))
