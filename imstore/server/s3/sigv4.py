"""S3 request signatures: SigV4 in the Authorization header or a presigned query, presigned SigV2.

Pure functions over the request's method, raw target and headers (no aiohttp), so they can be
tested against botocore's own signer. Signatures are compared in constant time; the derived
SigV4 signing key is kept per (secret, date, region, service), so a request costs two SHA-256
and one HMAC rather than five HMACs.
"""

from __future__ import annotations

import base64
import calendar
import hashlib
import hmac
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple
from urllib.parse import quote, unquote, unquote_to_bytes

from .xml import S3Error

__all__ = ["Caller", "ChunkContext", "Signatures", "MAX_SKEW", "EMPTY_SHA256", "uri_encode"]

ALGORITHM = "AWS4-HMAC-SHA256"
MAX_SKEW = 15 * 60  # seconds between the request's X-Amz-Date and our clock (S3's own limit)
MAX_PRESIGNED = 7 * 24 * 3600  # SigV4 presigned URLs live at most a week
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
UNSIGNED = "UNSIGNED-PAYLOAD"
STREAMING_SIGNED = ("STREAMING-AWS4-HMAC-SHA256-PAYLOAD", "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER")
STREAMING_UNSIGNED = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
# The sub-resources SigV2 signs (as botocore's HmacV1Auth lists them).
V2_SUBRESOURCES = frozenset({
    "accelerate", "acl", "cors", "defaultObjectAcl", "location", "logging", "partNumber", "policy", "requestPayment",
    "torrent", "versioning", "versionId", "versions", "website", "uploads", "uploadId", "response-content-type",
    "response-content-language", "response-expires", "response-cache-control", "response-content-disposition",
    "response-content-encoding", "delete", "lifecycle", "tagging", "restore", "storageClass", "notification",
    "replication", "analytics", "metrics", "inventory", "select", "select-type", "object-lock",
    "retention", "legal-hold",
})  # fmt: skip
_KEY_CACHE_SIZE = 256
_UNRESERVED_PATH = re.compile(r"[A-Za-z0-9/_.~-]*")  # a path UriEncode leaves as it is
# The Authorization header as every client we know writes it: (access key id, credential scope, signed
# headers, signature). Anything else takes the general parse, which names what is wrong.
_USUAL_V4 = re.compile(
    ALGORITHM + r" Credential=(\w+)/(\d{8}/[\w-]+/[\w-]+/aws4_request), ?SignedHeaders=([a-z0-9;-]+), ?Signature=([0-9a-f]{64})",
    re.ASCII,
)
_USUAL_SIGNED = "host;x-amz-content-sha256;x-amz-date"  # the signed headers of most requests
_IPAD, _OPAD = bytes(x ^ 0x36 for x in range(256)), bytes(x ^ 0x5C for x in range(256))


@dataclass(frozen=True)
class ChunkContext:
    """What a worker needs to check each chunk signature of a STREAMING-AWS4-HMAC-SHA256-PAYLOAD body."""

    signing_key: bytes
    seed_signature: str
    amz_date: str
    scope: str


class DerivedKey:
    """A SigV4 signing key, with the SHA-256 states of its inner and outer HMAC pads hashed once (RFC 2104):
    an HMAC under it then costs two state copies rather than OpenSSL setting the key up again (~1 us)."""

    __slots__ = ("key", "_inner", "_outer")

    def __init__(self, key: bytes) -> None:
        self.key = key
        padded = key.ljust(64, b"\0")  # 32 bytes: never longer than SHA-256's block
        self._inner = hashlib.sha256(padded.translate(_IPAD))
        self._outer = hashlib.sha256(padded.translate(_OPAD))

    def hmac_hex(self, message: bytes) -> str:
        """HMAC-SHA256(key, message) in lower-case hex, as hmac.new(key, message, "sha256").hexdigest()."""
        inner = self._inner.copy()
        inner.update(message)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.hexdigest()


class Caller(NamedTuple):  # a NamedTuple: made for every S3 request, and cheaper to make than a dataclass
    """Who signed a request and what they may do; payload is x-amz-content-sha256 as signed."""

    name: str
    scope: str
    payload: str
    chunks: ChunkContext | None = None


def uri_encode(text: str, *, keep_slash: bool) -> str:
    """AWS's UriEncode: every byte but A-Z a-z 0-9 - _ . ~ (and / in a path) percent-encoded, upper-case hex."""
    return quote(text.encode("utf-8", "surrogateescape"), safe="/~" if keep_slash else "~")


def canonical_path(raw_path: str) -> str:
    if _UNRESERVED_PATH.fullmatch(raw_path):
        return raw_path  # nothing to decode or encode (most paths)
    return uri_encode(unquote_to_bytes(raw_path).decode("utf-8", "surrogateescape"), keep_slash=True)


def query_pairs(raw_query: str) -> list[tuple[str, str]]:
    """The query's (name, value) pairs, percent-decoded (a '+' stays a '+', as S3 reads it)."""
    pairs = []
    for part in raw_query.split("&"):
        if part:
            name, _, value = part.partition("=")
            pairs.append((unquote(name), unquote(value)))
    return pairs


def canonical_query(pairs: list[tuple[str, str]]) -> str:
    if not pairs:
        return ""
    encoded = sorted((uri_encode(name, keep_slash=False), uri_encode(value, keep_slash=False)) for name, value in pairs)
    return "&".join(f"{name}={value}" for name, value in encoded)


def _trim(value: str) -> str:
    """Runs of whitespace as one space, none at either end (most values have nothing to trim: returned as they are)."""
    if value.isprintable() and "  " not in value and value[:1] != " " and value[-1:] != " ":
        return value
    return " ".join(value.split())


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode("utf-8"), hashlib.sha256).digest()


def _parse_amz_date(text: str) -> float:
    """Seconds since the epoch of 20260101T000000Z (by hand: strptime was a third of a signature check)."""
    if len(text) != 16 or text[8] != "T" or text[15] != "Z" or not (text[:8] + text[9:15]).isdigit():
        raise S3Error(403, "AccessDenied", "X-Amz-Date is not a date of the form 20260101T000000Z")
    try:
        moment = datetime(int(text[:4]), int(text[4:6]), int(text[6:8]), int(text[9:11]), int(text[11:13]), int(text[13:15]))
    except ValueError:
        raise S3Error(403, "AccessDenied", "X-Amz-Date is not a valid date") from None
    return calendar.timegm(moment.timetuple())


def _denied(message: str) -> S3Error:
    return S3Error(403, "AccessDenied", message)


def _no_match() -> S3Error:
    return S3Error(403, "SignatureDoesNotMatch", "The request signature we calculated does not match the signature you provided.")


class Signatures:
    """Checks a request's signature against the secrets lookup(access_key_id) gives: (name, secret, scope) or None."""

    def __init__(self, lookup: Callable[[str], tuple[str, str, str] | None], clock: Callable[[], float] = time.time):
        self.lookup = lookup
        self.clock = clock
        self._keys: dict[tuple[str, str], DerivedKey] = {}  # (secret, credential scope) -> its signing key
        self._last_date = ("", 0.0)  # the last X-Amz-Date parsed: requests of one second share it

    def _moment(self, amz_date: str) -> float:
        text, moment = self._last_date
        if amz_date != text:
            moment = _parse_amz_date(amz_date)
            self._last_date = (amz_date, moment)
        return moment

    def signing_key(self, secret: str, date: str, region: str, service: str) -> bytes:
        return self._derived(secret, f"{date}/{region}/{service}/aws4_request").key

    def _derived(self, secret: str, scope_text: str) -> DerivedKey:
        """The signing key of a credential scope (date/region/service/aws4_request), derived once per secret and scope."""
        cache_key = (secret, scope_text)
        derived = self._keys.get(cache_key)
        if derived is None:
            date, region, service, _ = scope_text.split("/")
            derived = DerivedKey(_hmac(_hmac(_hmac(_hmac(("AWS4" + secret).encode("utf-8"), date), region), service), "aws4_request"))
            self._keys[cache_key] = derived
            if len(self._keys) > _KEY_CACHE_SIZE:
                del self._keys[next(iter(self._keys))]  # the oldest
        return derived

    def check(self, method: str, raw_target: str, headers: Mapping[str, str]) -> Caller:
        """The signer of a request, or S3Error (403) for a missing, bad, expired or skewed signature."""
        raw_path, _, raw_query = raw_target.partition("?")
        authorization = headers.get("Authorization")
        if authorization is not None and not raw_query and (usual := _USUAL_V4.fullmatch(authorization)) is not None:
            caller = self._check_usual(method, raw_path, headers, usual)
            if caller is not None:
                return caller  # else: the general check below finds what is wrong and says so
        pairs = query_pairs(raw_query) if raw_query else []
        names = {name for name, _ in pairs}
        if authorization is not None:
            if authorization.startswith(ALGORITHM + " "):
                return self._check_v4_header(method, raw_path, pairs, headers, authorization)
            raise _denied("only AWS4-HMAC-SHA256 signatures are accepted in the Authorization header")
        if "X-Amz-Signature" in names:
            return self._check_v4_query(method, raw_path, pairs, headers)
        if "Signature" in names and "AWSAccessKeyId" in names:
            return self._check_v2_query(method, raw_path, pairs, headers)
        raise _denied("anonymous access is not allowed: sign the request with an S3 key (imstore token create --s3)")

    # ------------------------------------------------------------ SigV4
    def _check_usual(self, method: str, raw_path: str, headers: Mapping[str, str], usual: re.Match) -> Caller | None:
        """The signer of the most common request (a header signature, no query, a path of unreserved characters)
        in fewer steps than _check_v4_header; None for anything else or anything wrong, which that one then checks."""
        access_key_id, scope_text, signed_text, signature = usual.groups()
        amz_date = headers.get("X-Amz-Date")
        payload = headers.get("X-Amz-Content-SHA256")
        if amz_date is None or payload is None or amz_date[:8] != scope_text[:8] or _UNRESERVED_PATH.fullmatch(raw_path) is None:
            return None
        seen, moment = self._last_date
        if abs(self.clock() - (moment if amz_date == seen else self._moment(amz_date))) > MAX_SKEW:
            return None
        found = self.lookup(access_key_id)
        if found is None:
            return None
        host = headers.get("Host")
        if signed_text == _USUAL_SIGNED and host is not None and " " not in host + payload and (host + payload).isprintable():
            # What botocore and minio-go sign, with nothing to trim (X-Amz-Date is digits: parsed above).
            lines = f"host:{host}\nx-amz-content-sha256:{payload}\nx-amz-date:{amz_date}"
        else:
            names = signed_text.split(";")
            values = list(map(headers.get, names))
            if None in values:
                return None
            joined = "".join(values)
            if " " in joined or not joined.isprintable():  # else no value has anything for _trim to do
                values = [_trim(value) for value in values]
            lines = "\n".join(map(":".join, zip(names, values, strict=True)))
        canonical = f"{method}\n{raw_path}\n\n{lines}\n\n{signed_text}\n{payload}"
        derived = self._keys.get((found[1], scope_text)) or self._derived(found[1], scope_text)
        digest = hashlib.sha256(canonical.encode("utf-8", "surrogateescape")).hexdigest()
        if not hmac.compare_digest(derived.hmac_hex(f"{ALGORITHM}\n{amz_date}\n{scope_text}\n{digest}".encode()), signature):
            return None
        chunks = ChunkContext(derived.key, signature, amz_date, scope_text) if payload in STREAMING_SIGNED else None
        return Caller(found[0], found[2], payload, chunks)

    def _credential(self, credential: str, amz_date: str) -> tuple[str, str, str, str, str, str]:
        """(name, secret, scope, credential scope, region, service) for Credential=AKID/date/region/service/aws4_request."""
        parts = credential.split("/")
        if len(parts) != 5 or parts[4] != "aws4_request":
            raise S3Error(400, "AuthorizationHeaderMalformed", "the Credential is not AKID/date/region/service/aws4_request")
        access_key_id, date, region, service, _ = parts
        if date != amz_date[:8]:
            raise S3Error(400, "AuthorizationHeaderMalformed", "the Credential's date is not the date of X-Amz-Date")
        found = self.lookup(access_key_id)
        if found is None:
            raise S3Error(403, "InvalidAccessKeyId", "The AWS Access Key Id you provided does not exist in our records.")
        name, secret, scope = found
        return name, secret, scope, "/".join(parts[1:]), region, service

    def _canonical_requests(self, method, raw_path, pairs, headers, signed_headers: list[str], payload: str) -> list[str]:
        """The canonical request with the path as sent (what botocore and minio-go sign), and, if it differs,
        with the path encoded as AWS's UriEncode would (clients that send a reserved character unencoded)."""
        lines = []
        for name in signed_headers:
            value = headers.get(name)
            if value is None:
                raise _denied(f"the signed header {name} is not in the request")
            lines.append(f"{name}:{_trim(value)}\n")
        rest = [canonical_query(pairs), "".join(lines), ";".join(signed_headers), payload]
        paths = dict.fromkeys((raw_path, canonical_path(raw_path)))
        return ["\n".join([method, path, *rest]) for path in paths]

    def _verify_v4(self, secret, date, region, service, amz_date, scope_text, canonicals: list[str], signature: str) -> bytes:
        key = self.signing_key(secret, date, region, service)
        given = signature.encode("ascii", "replace")
        for canonical in canonicals:
            to_sign = f"{ALGORITHM}\n{amz_date}\n{scope_text}\n{sha256_hex(canonical.encode('utf-8', 'surrogateescape'))}"
            if hmac.compare_digest(hmac.digest(key, to_sign.encode("utf-8"), "sha256").hex().encode(), given):
                return key
        raise _no_match()

    def _check_v4_header(self, method, raw_path, pairs, headers, authorization: str) -> Caller:
        fields = {}
        for part in authorization[len(ALGORITHM) + 1 :].split(","):
            name, _, value = part.strip().partition("=")
            fields[name] = value
        if not {"Credential", "SignedHeaders", "Signature"} <= fields.keys():
            raise S3Error(400, "AuthorizationHeaderMalformed", "the Authorization header lacks Credential, SignedHeaders or Signature")
        amz_date = headers.get("X-Amz-Date") or ""
        if not amz_date:
            raise _denied("X-Amz-Date is missing")  # a Date header alone is not accepted (clients all send X-Amz-Date)
        moment = self._moment(amz_date)
        if abs(self.clock() - moment) > MAX_SKEW:
            raise S3Error(403, "RequestTimeTooSkewed", "The difference between the request time and the server's time is too large.")
        name, secret, scope, scope_text, region, service = self._credential(fields["Credential"], amz_date)
        payload = headers.get("X-Amz-Content-SHA256")
        if payload is None:
            raise S3Error(400, "InvalidRequest", "x-amz-content-sha256 is missing")
        signed = fields["SignedHeaders"].split(";")
        canonical = self._canonical_requests(method, raw_path, pairs, headers, signed, payload)
        key = self._verify_v4(secret, scope_text[:8], region, service, amz_date, scope_text, canonical, fields["Signature"])
        chunks = ChunkContext(key, fields["Signature"], amz_date, scope_text) if payload in STREAMING_SIGNED else None
        return Caller(name, scope, payload, chunks)

    def _check_v4_query(self, method, raw_path, pairs, headers) -> Caller:
        query = dict(pairs)
        if query.get("X-Amz-Algorithm") != ALGORITHM:
            raise S3Error(400, "AuthorizationQueryParametersError", "X-Amz-Algorithm must be AWS4-HMAC-SHA256")
        amz_date = query.get("X-Amz-Date", "")
        moment = _parse_amz_date(amz_date)
        try:
            expires = int(query.get("X-Amz-Expires", ""))
        except ValueError:
            raise S3Error(400, "AuthorizationQueryParametersError", "X-Amz-Expires must be a number of seconds") from None
        if not 0 < expires <= MAX_PRESIGNED:
            raise S3Error(400, "AuthorizationQueryParametersError", "X-Amz-Expires must be between 1 and 604800 seconds")
        now = self.clock()
        if moment - now > MAX_SKEW:
            raise S3Error(403, "RequestTimeTooSkewed", "The difference between the request time and the server's time is too large.")
        if now > moment + expires:
            raise _denied("Request has expired")
        name, secret, scope, scope_text, region, service = self._credential(query.get("X-Amz-Credential", ""), amz_date)
        signed = query.get("X-Amz-SignedHeaders", "host").split(";")
        payload = query.get("X-Amz-Content-Sha256") or headers.get("X-Amz-Content-SHA256") or UNSIGNED
        unsigned_pairs = [(n, v) for n, v in pairs if n != "X-Amz-Signature"]
        canonical = self._canonical_requests(method, raw_path, unsigned_pairs, headers, signed, payload)
        self._verify_v4(secret, scope_text[:8], region, service, amz_date, scope_text, canonical, query.get("X-Amz-Signature", ""))
        return Caller(name, scope, payload)

    # ------------------------------------------------------------ SigV2 (presigned only: boto3's default URLs)
    def _check_v2_query(self, method, raw_path, pairs, headers) -> Caller:
        query = dict(pairs)
        try:
            expires = int(query["Expires"])
        except ValueError:
            raise S3Error(403, "AccessDenied", "Expires must be a number of seconds since the epoch") from None
        if self.clock() > expires:
            raise _denied("Request has expired")
        found = self.lookup(query["AWSAccessKeyId"])
        if found is None:
            raise S3Error(403, "InvalidAccessKeyId", "The AWS Access Key Id you provided does not exist in our records.")
        name, secret, scope = found
        amz = sorted((n.lower(), _trim(v)) for n, v in headers.items() if n.lower().startswith("x-amz-"))
        amz_lines = "".join(f"{n}:{v}\n" for n, v in amz)
        subresources = sorted((n, v) for n, v in pairs if n in V2_SUBRESOURCES)
        resource = raw_path
        if subresources:
            resource += "?" + "&".join(f"{n}={v}" if v else n for n, v in subresources)
        to_sign = "\n".join([method, headers.get("Content-MD5", ""), headers.get("Content-Type", ""), str(expires), amz_lines + resource])
        expected = base64.b64encode(hmac.new(secret.encode("utf-8"), to_sign.encode("utf-8"), hashlib.sha1).digest())
        if not hmac.compare_digest(expected, query["Signature"].encode("ascii", "replace")):
            raise _no_match()
        return Caller(name, scope, UNSIGNED)


def chunk_signature(context: ChunkContext, previous: str, chunk_sha256: str) -> str:
    """The signature of one chunk of a signed streaming body (each chains the one before it)."""
    to_sign = f"AWS4-HMAC-SHA256-PAYLOAD\n{context.amz_date}\n{context.scope}\n{previous}\n{EMPTY_SHA256}\n{chunk_sha256}"
    return hmac.new(context.signing_key, to_sign.encode("utf-8"), hashlib.sha256).hexdigest()


def trailer_signature(context: ChunkContext, previous: str, trailer: bytes) -> str:
    to_sign = f"AWS4-HMAC-SHA256-TRAILER\n{context.amz_date}\n{context.scope}\n{previous}\n{sha256_hex(trailer)}"
    return hmac.new(context.signing_key, to_sign.encode("utf-8"), hashlib.sha256).hexdigest()
