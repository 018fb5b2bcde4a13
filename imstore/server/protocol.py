"""What the gateway, the workers and the client agree on: routes, keys in paths, the JSON documents.

No aiohttp here: the route table is plain data so the OpenAPI test, the gateway
(auth scope, metrics labels, 404/405) and the worker (dispatch) share one truth.
The wire documents (a version, a put's answer, a problem) are built and parsed
here and nowhere else, so the HTTP API does not follow the CLI's --json output.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote_to_bytes, urlencode

from .. import errors
from ..errors import ImstoreError, InvalidInput, InvalidKey
from ..model import PutResult, Version, version_fields

__all__ = [
    "Route",
    "ROUTES",
    "RouteMatch",
    "match_route",
    "key_path",
    "problem",
    "error_from_problem",
    "server_paths",
    "without_paths",
    "version_document",
    "version_from_document",
    "put_document",
    "put_result_from_document",
    "key_etag",
    "object_id_of_etag",
    "PROBLEM_TYPE",
    "PAGE_DEFAULT",
    "PAGE_MAX",
    "next_link",
    "IMMUTABLE",
    "STALE_HEADER",
    "DAMAGED_HEADER",
    "VERSION_HEADER",
]

PROBLEM_TYPE = "application/problem+json"
IMMUTABLE = "private, max-age=31536000, immutable"
VERSION_HEADER = "X-Imstore-Version"
STALE_HEADER = "X-Imstore-Stale"
DAMAGED_HEADER = "X-Imstore-Damaged"  # 1: the log is damaged after this answer's version, a newer one may be lost (H2)
MESSAGE_HEADER = "X-Imstore-Message"
META_HEADER = "X-Imstore-Meta"
WORKER_HEADER = "X-Imstore-Worker"
# The body types POST /v1/import takes (no Content-Type: a first byte '{' means JSON lines, else a tar).
JSONL_TYPES = frozenset({"application/x-ndjson", "application/jsonl", "application/json-lines", "application/x-jsonlines"})
TAR_TYPES = frozenset({
    "application/x-tar", "application/tar", "application/gzip", "application/x-gzip", "application/x-bzip2",
    "application/x-xz", "application/zstd", "application/x-zstd", "application/octet-stream",
})  # fmt: skip
# Internal, gateway <-> worker only (the gateway drops them from clients' requests and its answers):
SENDFILE_OFFER = "X-Imstore-Sendfile"  # gateway → worker: "send me where the verified bytes are"
SENDFILE_FILE = "X-Imstore-File"  # worker → gateway: "offset length path" of bytes it has just verified
EXPAND_LIMIT = "X-Imstore-Expand-Limit"  # gateway → worker: bytes an import body may expand to (its --max-body)
S3_CONTEXT = "X-Imstore-S3"  # gateway → worker: an S3 request, and who signed it (s3/front.py)
INTERNAL_HEADERS = frozenset({SENDFILE_OFFER.lower(), SENDFILE_FILE.lower(), EXPAND_LIMIT.lower(), S3_CONTEXT.lower()})


@dataclass(frozen=True)
class Route:
    """One route of HTTP API v1: a name (metrics label), its path template and methods."""

    name: str
    template: str
    methods: tuple[str, ...]
    public: bool = False  # no token needed

    @property
    def prefix(self) -> str:
        return self.template.split("{", 1)[0]

    @property
    def has_param(self) -> bool:
        return "{" in self.template


ROUTES: tuple[Route, ...] = (
    Route("key", "/v1/keys/{key}", ("GET", "HEAD", "PUT", "DELETE")),
    Route("keys", "/v1/keys", ("GET",)),
    Route("history", "/v1/history/{key}", ("GET",)),
    Route("log", "/v1/log", ("GET",)),
    Route("object", "/v1/objects/{hash}", ("GET", "HEAD")),
    Route("import", "/v1/import", ("POST",)),
    Route("checkpoint", "/v1/checkpoint", ("GET",)),
    Route("inclusion", "/v1/proofs/inclusion", ("GET",)),
    Route("consistency", "/v1/proofs/consistency", ("GET",)),
    Route("replication", "/v1/replication", ("GET",)),
    Route("replication_log", "/v1/replication/log", ("GET",)),
    Route("replication_objects", "/v1/replication/objects", ("GET",)),
    Route("replication_packs", "/v1/replication/packs", ("GET",)),
    Route("replication_pack", "/v1/replication/packs/{file}", ("GET",)),
    Route("healthz", "/healthz", ("GET",), public=True),
    Route("healthz_writable", "/healthz/writable", ("GET",), public=True),
    Route("healthz_readable", "/healthz/readable", ("GET",), public=True),
    Route("metrics", "/metrics", ("GET",)),
    Route("openapi", "/openapi.json", ("GET",)),
)
WRITE_METHODS = frozenset({"PUT", "DELETE", "POST"})
# GET /v1/keys and GET /v1/log answer in pages (S2): `limit` entries (default PAGE_DEFAULT, at most
# PAGE_MAX; more is taken as PAGE_MAX), and `Link: <...>; rel="next"` while more follow.
PAGE_DEFAULT = 1000
PAGE_MAX = 10000


@dataclass(frozen=True)
class RouteMatch:
    route: Route
    raw_param: str  # still percent-encoded; decode with .param()
    raw_query: str

    def param(self) -> str:
        """The path parameter, percent-decoded once as UTF-8 (dot segments left alone)."""
        try:
            return unquote_to_bytes(self.raw_param).decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidKey("the key in the path is not valid UTF-8 once percent-decoded") from None

    def query(self) -> dict[str, str]:
        """Query parameters (the last value of each name wins)."""
        try:
            parsed = parse_qs(self.raw_query, keep_blank_values=True, errors="strict")
        except (UnicodeDecodeError, ValueError):
            raise InvalidInput("the query string is not valid UTF-8") from None
        return {name: values[-1] for name, values in parsed.items()}


def match_route(raw_target: str) -> RouteMatch | None:
    """Match a raw request target (path?query, never normalised) to a route, or None."""
    path, _, raw_query = raw_target.partition("?")
    for route in ROUTES:
        if route.has_param:
            if path.startswith(route.prefix):
                return RouteMatch(route, path[len(route.prefix) :], raw_query)
        elif path == route.template:
            return RouteMatch(route, "", raw_query)
    return None


def next_link(path: str, query: dict[str, str]) -> str:
    """The Link header value for the next page of a listing at path (query: its parameters, the cursor included)."""
    return f"<{path}?{urlencode(query, quote_via=quote, safe='')}>; rel=\"next\""


def key_path(route_prefix: str, key: str) -> str:
    """The path for a key: every byte that is not unreserved is percent-encoded."""
    return route_prefix + quote(key.encode("utf-8", "surrogatepass"), safe="")


def version_document(version: Version) -> dict:
    """Everything about a version (the OpenAPI `Version` schema); time_ns lets a client rebuild it exactly."""
    return {**version_fields(version), "time_ns": version.time_ns}


def version_from_document(document: dict) -> Version:
    """The client side of `version_document` (`time` is only for people: time_ns is the truth)."""
    return Version(
        key=document["key"],
        version=document["version"],
        seq=document.get("seq", 0),
        op=document.get("op", "put"),
        hash=document.get("hash"),
        size=document.get("size", 0),
        time_ns=document.get("time_ns", 0),
        content_type=document.get("content_type"),
        message=document.get("message"),
        meta=document.get("meta") or {},
    )


def put_document(result: PutResult) -> dict:
    """A put's answer: its version, and whether it added nothing (`unchanged`)."""
    return {**version_document(result.version), "unchanged": result.unchanged}


def put_result_from_document(document: dict) -> PutResult:
    return PutResult(version_from_document(document), bool(document.get("unchanged")))


def key_etag(version: int, object_id: str) -> str:
    """The ETag of a key's answer (H1): its version and its object, `v7-<object id>` (quoted on the wire).

    The version names the representation whole (bytes, content type, metadata never change within one),
    so a new version that only changes the type gets a new tag; the object id keeps the client's hash
    check (and tags from another store at the same address cannot pass for this one's)."""
    return f"v{version}-{object_id}"


def object_id_of_etag(etag: str) -> str:
    """The object id in a key answer's ETag: `"v7-<id>"` (H1), or `"<id>"` from a server before H1."""
    return etag.strip().removeprefix("W/").strip('"').rpartition("-")[2]


def problem(error: ImstoreError | None, status: int, detail: str) -> bytes:
    """An RFC 9457 problem document; `error` and `exit_code` let the CLI re-raise the same error."""
    document = {
        "type": "about:blank",
        "title": error.title if error is not None else _status_title(status),
        "status": status,
        "detail": detail,
        "error": type(error).__name__ if error is not None else None,
        "exit_code": error.exit_code if error is not None else None,
    }
    return json.dumps(document, ensure_ascii=False).encode("utf-8")


PATH_WITHHELD = "[path withheld]"


def server_paths(*places: str | os.PathLike | None) -> tuple[str, ...]:
    """Every absolute spelling of places (as given, normalised, symlinks resolved), longest first."""
    spellings: set[str] = set()
    for place in places:
        if place is not None:
            given = Path(place).expanduser().absolute()
            spellings |= {str(given), os.path.abspath(given), os.path.realpath(given)}
    return tuple(sorted(spellings - {"/"}, key=len, reverse=True))


def without_paths(detail: str, paths: tuple[str, ...]) -> str:
    """detail with every path under one of paths withheld: where the server keeps its files is not
    the client's business (the server's own log keeps the whole message)."""
    for path in paths:
        if path in detail:
            detail = re.sub(re.escape(path) + r"[^\s'\"(),;:]*", PATH_WITHHELD, detail)
    return detail


def error_from_problem(status: int, body: bytes) -> ImstoreError:
    """Rebuild the store's error from a problem document (the client side of `problem`)."""
    try:
        document = json.loads(body)
        name, detail = document.get("error"), document.get("detail") or document.get("title")
    except (ValueError, AttributeError):
        name, detail = None, body[:200].decode("utf-8", "replace").strip()
    cls = getattr(errors, name, None) if isinstance(name, str) else None
    if not (isinstance(cls, type) and issubclass(cls, ImstoreError)):
        cls = _class_for_status(status)
    return cls(detail or f"HTTP {status}")


def _class_for_status(status: int) -> type[ImstoreError]:
    return {
        400: errors.UsageError,
        401: errors.NotAuthorised,
        403: errors.Forbidden,
        404: errors.NotFound,
        412: errors.PreconditionFailed,
        413: errors.InvalidInput,
        415: errors.UsageError,
        414: errors.InvalidKey,
        431: errors.UsageError,
        502: errors.Unavailable,
        503: errors.Unavailable,
        504: errors.Unavailable,
    }.get(status, ImstoreError)


def _status_title(status: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase.lower()
    except ValueError:
        return "error"
