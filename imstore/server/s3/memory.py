"""The S3 port's memory of latest-version GET answers, as the v1 port keeps them (latest.py, RP6).

A signed `GET /BUCKET/KEY` without a query is the latest version of a key: it changes only when
the log does. So, after the signature check, the S3 port answers a repeat from the answer a worker
gave under the same log stamp, header for header (ETag, Last-Modified, x-amz-version-id, the
Object Lock headers, user metadata...). Only requests whose every header is one the answer does
not depend on are kept or served (a whitelist: a header we do not know, such as
x-amz-checksum-mode, a Range or a condition, goes to a worker). Bytes are kept once they hash
here to the answer's ETag: the BLAKE3 id (64 hex) of a version written by the CLI or v1, the MD5
(32 hex) of an S3 upload; a multipart ETag (`-N`) cannot be checked over the whole bytes, so
those answers are never kept.
"""

from __future__ import annotations

import hashlib

from ...hashing import OBJECT_ID_LEN, hash_bytes
from ..latest import LatestAnswers, LogStamps, Stamp
from ..protocol import WORKER_HEADER
from ..wire import Prepared

__all__ = ["S3Memory", "s3_answer_verified", "ANSWER_NEUTRAL"]

# Request headers no S3 GET answer depends on (lower case); anything else sends the request to a worker.
ANSWER_NEUTRAL = frozenset({
    "host", "authorization", "x-amz-date", "x-amz-content-sha256", "user-agent", "accept", "accept-encoding",
    "connection", "keep-alive", "amz-sdk-invocation-id", "amz-sdk-request", "x-amz-user-agent", "content-length",
})  # fmt: skip
# The same names as clients spell them (botocore, aws-cli, minio-go, rclone, curl): most requests are
# told apart by one set look-up per header, without lower-casing each name.
_NEUTRAL_AS_SENT = ANSWER_NEUTRAL | {
    "Host", "Authorization", "X-Amz-Date", "X-Amz-Content-SHA256", "X-Amz-Content-Sha256", "User-Agent", "Accept",
    "Accept-Encoding", "Connection", "Keep-Alive", "Amz-Sdk-Invocation-Id", "Amz-Sdk-Request", "X-Amz-User-Agent",
    "Content-Length",
}  # fmt: skip
_HEX = frozenset("0123456789abcdef")


def s3_answer_verified(headers: dict, data: bytes) -> bool:
    """The bytes hash to the answer's ETag: BLAKE3 (64 hex, the object id) or MD5 (32 hex, an S3 upload)."""
    etag = headers.get("ETag", "").strip('"')
    if not _HEX.issuperset(etag):
        return False
    if len(etag) == OBJECT_ID_LEN:
        return hash_bytes(data) == etag
    if len(etag) == 32:
        return hashlib.md5(data, usedforsecurity=False).hexdigest() == etag
    return False


class S3Memory:
    """Kept answers to S3 GETs of a key's latest version, for one log stamp at a time."""

    def __init__(self, store_root: str, stamps: LogStamps | None = None) -> None:
        self.answers = LatestAnswers(store_root, verified=s3_answer_verified, stamps=stamps)

    @staticmethod
    def may_answer(method: str, raw_target: str, headers) -> bool:
        """Whether a kept answer answers this request: a GET of an object key, no query, only neutral headers."""
        if method != "GET" or "?" in raw_target or raw_target.endswith("/") or raw_target.count("/") < 2:
            return False
        if not _NEUTRAL_AS_SENT.issuperset(headers) and not ANSWER_NEUTRAL.issuperset(map(str.lower, headers)):
            return False
        return headers.get("Content-Length", "0") == "0"

    def stamp(self) -> Stamp | None:
        """The log's stamp before the request is forwarded (see latest.py)."""
        return self.answers.stamp()

    def find(self, raw_target: str, stamp: Stamp | None) -> Prepared | None:
        return self.answers.get(raw_target, stamp)

    def keep(self, raw_target: str, stamp: Stamp | None, headers: dict, data: bytes) -> None:
        kept = {name: value for name, value in headers.items() if name != WORKER_HEADER}
        self.answers.keep(raw_target, stamp, kept, data)
