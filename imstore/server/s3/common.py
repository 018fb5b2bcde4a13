"""What the S3 operation modules share: XML answers, upload bodies, kept metadata and preconditions."""

from __future__ import annotations

import re
from email.utils import parsedate_to_datetime

from aiohttp import web

from ...errors import KeyDeleted, KeyNotFound
from .chunked import AwsChunkedBody
from .digests import Digests
from .listing import etag_of
from .sigv4 import STREAMING_SIGNED, STREAMING_UNSIGNED, UNSIGNED, Caller
from .xml import XML_TYPE, S3Error

__all__ = [
    "KEPT_HEADERS", "RESPONSE_OVERRIDES", "LOCK_HEADERS", "OWNER", "upload_meta", "xml_response", "not_implemented", "upload_body",
    "write_conditions", "etag_in", "http_date", "check_conditions", "delete_condition", "parts_layout", "part_span",
    "part_checksums",
]  # fmt: skip

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
OWNER = (("ID", "imstore"), ("DisplayName", "imstore"))
# Standard headers a PUT may set that GET and HEAD give back (kept in the version's meta under these names).
KEPT_HEADERS = ("cache-control", "content-disposition", "content-encoding", "content-language", "expires")
# GET ?response-*=VALUE answers with that header instead (presigned download links use them).
RESPONSE_OVERRIDES = {"response-content-type": "Content-Type", "response-content-language": "Content-Language",
                      "response-expires": "Expires", "response-cache-control": "Cache-Control",
                      "response-content-disposition": "Content-Disposition", "response-content-encoding": "Content-Encoding"}  # fmt: skip


# Every version is under Object Lock in COMPLIANCE mode with no end, and held (S3-8).
LOCK_HEADERS = {"x-amz-object-lock-mode": "COMPLIANCE", "x-amz-object-lock-retain-until-date": "9999-12-31T23:59:59.000Z",
                "x-amz-object-lock-legal-hold": "ON"}  # fmt: skip


def upload_meta(headers) -> dict:
    """The metadata a PUT, a multipart upload or a REPLACE copy keeps: x-amz-meta-* and the standard headers."""
    meta = {name.lower(): value for name, value in headers.items() if name.lower().startswith("x-amz-meta-")}
    for name in KEPT_HEADERS:
        value = headers.get(name)
        if name == "content-encoding" and value is not None:  # aws-chunked is the transfer's, not the object's
            value = ",".join(part.strip() for part in value.split(",") if part.strip() != "aws-chunked") or None
        if value:
            meta[name] = value
    return meta


def xml_response(body: bytes, status: int = 200, headers: dict | None = None) -> web.Response:
    return web.Response(status=status, body=body, headers={**(headers or {}), "Content-Type": XML_TYPE})


def not_implemented(what: str) -> S3Error:
    return S3Error(501, "NotImplemented", f"{what} is not implemented by imstore")


def upload_body(caller: Caller, headers, pieces):
    """(digests, the decoded body checked against them) for the payload mode the client signed."""
    payload = caller.payload
    chunked = payload in STREAMING_SIGNED or payload == STREAMING_UNSIGNED or "aws-chunked" in headers.get("Content-Encoding", "")
    digests = Digests(headers, payload if _HEX64.match(payload) else None)
    if chunked:
        decoder = AwsChunkedBody(pieces, caller.chunks, trailer_expected=payload.endswith("TRAILER"))
        return digests, digests.watch(decoder, decoder.trailers)
    if payload not in (UNSIGNED,) and not _HEX64.match(payload):
        raise S3Error(400, "InvalidArgument", "x-amz-content-sha256 must be a SHA-256, UNSIGNED-PAYLOAD or a STREAMING- mode")
    return digests, digests.watch(pieces)


def write_conditions(store, store_key: str, headers) -> dict:
    """If-None-Match: * → if_absent; If-Match: ETAG → if_version of the latest version when its ETag matches."""
    conditions: dict = {}
    unwanted = headers.get("If-None-Match")
    if unwanted is not None and unwanted.strip() == "*":
        conditions["if_absent"] = True
    elif unwanted is not None:  # an ETag: write unless the latest has it, atomically against a version in between
        try:
            latest = store.resolve(store_key)
        except (KeyNotFound, KeyDeleted):
            latest = None
        if latest is None:
            conditions["if_absent"] = True
        elif etag_in(unwanted, etag_of(latest)):
            raise S3Error(412, "PreconditionFailed", "At least one of the pre-conditions you specified did not hold")
        else:
            conditions["if_version"] = latest.version
    wanted = headers.get("If-Match")
    if wanted is not None:
        try:
            latest = store.resolve(store_key)
        except (KeyNotFound, KeyDeleted):
            raise S3Error(404, "NoSuchKey", "The specified key does not exist.") from None
        if not etag_in(wanted, etag_of(latest)):
            raise S3Error(412, "PreconditionFailed", "At least one of the pre-conditions you specified did not hold")
        conditions["if_version"] = latest.version  # atomic: the commit fails if another version came in between
    return conditions


def delete_condition(store, store_key: str, etag: str | None, modified: str | None, size: str | None) -> int | None:
    """The if_version a conditional DELETE (If-Match, x-amz-if-match-last-modified-time, -size) deletes at, or None
    without conditions; 412 when the current version does not match. A key never written is KeyNotFound and one whose
    current version is a delete marker is KeyDeleted (nothing to add: 204) when the only condition is `If-Match: *`;
    any other condition is decided against the marker, which has no ETag, time to match or size: 412 (S3-21)."""
    if etag is None and modified is None and size is None:
        return None
    try:
        latest = store.resolve(store_key)
    except KeyDeleted:
        if etag is not None and etag.strip() == "*" and modified is None and size is None:
            raise
        raise S3Error(412, "PreconditionFailed", "At least one of the pre-conditions you specified did not hold:"
                      " the current version is a delete marker") from None  # fmt: skip
    seconds = http_date(modified) if modified is not None else None
    if ((etag is not None and not etag_in(etag, etag_of(latest)))
            or (modified is not None and seconds != latest.time_ns // 1_000_000_000)
            or (size is not None and size != str(latest.size))):  # fmt: skip
        raise S3Error(412, "PreconditionFailed", "At least one of the pre-conditions you specified did not hold")
    return latest.version  # atomic: a version added in between fails the delete


def etag_in(header: str, etag: str) -> bool:
    return any(tag.strip() in ("*", etag) or f'"{tag.strip()}"' == etag for tag in header.split(","))


def check_conditions(request_headers, etag: str, time_ns: int, headers: dict) -> None:
    """GET/HEAD preconditions in S3's order: If-Match, If-Unmodified-Since → 412; If-None-Match, If-Modified-Since → 304."""
    seconds = time_ns // 1_000_000_000
    if_match = request_headers.get("If-Match")
    if if_match is not None and not etag_in(if_match, etag):
        raise S3Error(412, "PreconditionFailed", "At least one of the pre-conditions you specified did not hold")
    unmodified = http_date(request_headers.get("If-Unmodified-Since"))
    if if_match is None and unmodified is not None and seconds > unmodified:
        raise S3Error(412, "PreconditionFailed", "At least one of the pre-conditions you specified did not hold")
    if_none_match = request_headers.get("If-None-Match")
    if if_none_match is not None and etag_in(if_none_match, etag):
        raise S3Error(304, "NotModified", "Not Modified", {k: v for k, v in headers.items() if k in ("ETag", "Last-Modified")})
    modified = http_date(request_headers.get("If-Modified-Since"))
    if if_none_match is None and modified is not None and seconds <= modified:
        raise S3Error(304, "NotModified", "Not Modified", {k: v for k, v in headers.items() if k in ("ETag", "Last-Modified")})


def http_date(value: str | None) -> int | None:
    if not value:
        return None
    try:
        return int(parsedate_to_datetime(value).timestamp())
    except (TypeError, ValueError):
        return None


def parts_layout(sizes: list[int]) -> str | None:
    """The part sizes of a multipart upload as kept in meta `s3-parts`: "N*SIZE+LAST" when all but the last
    are equal (the usual case), else the sizes joined by commas; None when even that is too long to keep."""
    if len(sizes) > 1 and len(set(sizes[:-1])) == 1:
        return f"{len(sizes) - 1}*{sizes[0]}+{sizes[-1]}"
    text = ",".join(str(size) for size in sizes)
    return text if len(text) <= 16 * 1024 else None


def part_span(layout: str | None, number_text: str, size: int) -> tuple[int, int, int]:
    """(start, end, parts count) of part `number` of a version (GetObject ?partNumber); a single-part
    version is its own part 1."""
    if not number_text.isdigit() or not 1 <= int(number_text) <= 10_000:
        raise S3Error(400, "InvalidArgument", "Part number must be an integer between 1 and 10000, inclusive")
    number = int(number_text)
    if layout is None:
        if number != 1:
            raise S3Error(400, "InvalidPart", "One or more of the specified parts could not be found.")
        return 0, size, 1
    if "*" in layout:
        head, _, last = layout.partition("+")
        count_text, _, each = head.partition("*")
        sizes_count, each_size = int(count_text) + 1, int(each)
        if number > sizes_count:
            raise S3Error(400, "InvalidPart", "One or more of the specified parts could not be found.")
        start = (number - 1) * each_size
        return start, start + (each_size if number < sizes_count else int(last)), sizes_count
    sizes = [int(text) for text in layout.split(",")]
    if number > len(sizes):
        raise S3Error(400, "InvalidPart", "One or more of the specified parts could not be found.")
    start = sum(sizes[: number - 1])
    return start, start + sizes[number - 1], len(sizes)


def part_checksums(meta: dict) -> tuple[str, list[str]] | None:
    """(algorithm, each part's base64 checksum) of a multipart version completed with checksums, or None."""
    kept = meta.get("s3-part-checksums")
    algorithm = next((name[len("s3-checksum-") :] for name in meta if name.startswith("s3-checksum-") and name != "s3-checksum-type"), None)
    return (algorithm, kept.split(",")) if kept and algorithm else None
