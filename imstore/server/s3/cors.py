"""A bucket's CORS configuration (S3-25): Put/Get/DeleteBucketCors, the unsigned preflight and the headers of
actual requests from a browser.

The configuration is metadata (`s3-cors`, normalized JSON) on a new version of the bucket's marker key
(`BUCKET/`, buckets.py): every change is a version in the log, replicated and tamper-evident, and
DeleteBucketCors writes a marker version without it. The latest marker version is the configuration.
"""

from __future__ import annotations

import json

from aiohttp import web

from ...errors import PreconditionFailed
from .buckets import MARKER_META, marker_key
from .common import xml_response
from .digests import check_whole_body
from .xml import S3Error, document, parse

__all__ = ["CORS_META", "BucketCors", "parse_cors", "cors_document", "bucket_cors", "match_rule", "actual_headers"]

CORS_META = "s3-cors"
METHODS = ("GET", "PUT", "HEAD", "POST", "DELETE")  # the only ones S3 takes in a rule
MAX_RULES = 100
MAX_BODY = 64 * 1024  # S3's limit on a configuration
_MAX_STORED = 60 * 1024  # the JSON must fit in a version's metadata (64 KiB, with the marker's own)
_VARY = "Origin, Access-Control-Request-Headers, Access-Control-Request-Method"
_FIELDS = (("ID", "id"), ("AllowedHeader", "headers"), ("AllowedMethod", "methods"), ("AllowedOrigin", "origins"),
           ("ExposeHeader", "expose"), ("MaxAgeSeconds", "max_age"))  # fmt: skip


def parse_cors(body: bytes) -> list[dict]:
    """The rules of a CORSConfiguration, checked as S3 checks them (MalformedXML, InvalidRequest)."""
    if len(body) > MAX_BODY:
        raise S3Error(400, "MalformedXML", f"a CORS configuration is at most {MAX_BODY} bytes")
    root = parse(body, "CORSConfiguration")
    if root.tag != "CORSConfiguration":
        raise S3Error(400, "MalformedXML", "the body is not a CORSConfiguration")
    elements = root.findall("CORSRule")
    if not elements or len(elements) > MAX_RULES or len(elements) != len(root):
        raise S3Error(400, "MalformedXML", f"a CORSConfiguration holds 1 to {MAX_RULES} CORSRule elements and nothing else")
    rules = []
    for element in elements:
        known = {tag for tag, _ in _FIELDS}
        if any(child.tag not in known for child in element):
            raise S3Error(400, "MalformedXML", f"unknown element in a CORSRule: {sorted({c.tag for c in element} - known)[0]}")
        texts = {name: [(child.text or "").strip() for child in element.findall(tag)] for tag, name in _FIELDS}
        rule = {name: texts[name] for name in ("origins", "methods", "headers", "expose")}
        if not rule["origins"] or not rule["methods"]:
            raise S3Error(400, "MalformedXML", "every CORSRule has an AllowedOrigin and an AllowedMethod")
        for method in rule["methods"]:
            if method not in METHODS:
                raise S3Error(400, "InvalidRequest", f"Found unsupported HTTP method in CORS config. Unsupported method is {method}")
        for what, values in (("AllowedOrigin", rule["origins"]), ("AllowedHeader", rule["headers"])):
            for value in values:
                if value.count("*") > 1:
                    raise S3Error(400, "InvalidRequest", f'{what} "{value}" can not have more than one wildcard.')
        for value in rule["expose"]:
            if "*" in value:
                raise S3Error(400, "InvalidRequest", f'ExposeHeader "{value}" contains wildcard. We currently do not support'
                              " wildcard for ExposeHeader.")  # fmt: skip
        if len(texts["id"]) > 1 or len(texts["max_age"]) > 1 or any(len(value) > 255 for value in texts["id"]):
            raise S3Error(400, "MalformedXML", "a CORSRule has at most one ID (255 characters) and one MaxAgeSeconds")
        if texts["id"]:
            rule["id"] = texts["id"][0]
        if texts["max_age"]:
            if not texts["max_age"][0].isdigit() or not texts["max_age"][0].isascii():
                raise S3Error(400, "MalformedXML", "MaxAgeSeconds is a whole number of seconds")
            rule["max_age"] = int(texts["max_age"][0])
        rules.append(rule)
    if len(stored_form(rules)) > _MAX_STORED:
        raise S3Error(400, "InvalidRequest", f"the CORS configuration is over {_MAX_STORED} bytes once normalized")
    return rules


def stored_form(rules: list[dict]) -> str:
    return json.dumps(rules, separators=(",", ":"), ensure_ascii=False)


def cors_document(rules: list[dict]) -> bytes:
    """GetBucketCors's answer, elements in S3's order."""
    rows = []
    for rule in rules:
        children = [("ID", rule.get("id"))]
        children += [(tag, value) for tag, name in _FIELDS[1:5] for value in rule[name]]
        children.append(("MaxAgeSeconds", rule.get("max_age")))
        rows.append(("CORSRule", tuple(children)))
    return document("CORSConfiguration", (("", rows),))


def bucket_cors(store, bucket: str) -> tuple[bool, list[dict] | None]:
    """(whether the bucket exists, its CORS rules or None), from one index read of its first key."""
    page = store.ls_page(marker_key(bucket), True, None, None, 1)
    if not page:
        return False, None
    first = page[0]
    if first.key != marker_key(bucket) or CORS_META not in first.meta:
        return True, None
    return True, json.loads(first.meta[CORS_META])


def _matches(pattern: str, value: str, fold: bool) -> bool:
    if fold:
        pattern, value = pattern.lower(), value.lower()
    head, star, tail = pattern.partition("*")
    if not star:
        return pattern == value
    return len(value) >= len(head) + len(tail) and value.startswith(head) and value.endswith(tail)


def match_rule(rules: list[dict] | None, origin: str, method: str, request_headers: list[str] = ()) -> dict | None:
    """The first rule that allows this origin, method and every requested header (S3 takes the first match)."""
    for rule in rules or ():
        if method not in rule["methods"] or not any(_matches(allowed, origin, False) for allowed in rule["origins"]):
            continue
        if all(any(_matches(allowed, header, True) for allowed in rule["headers"]) for header in request_headers):
            return rule
    return None


def _allow(rule: dict, origin: str) -> dict:
    headers = {"Access-Control-Allow-Origin": "*" if "*" in rule["origins"] else origin,
               "Access-Control-Allow-Methods": ", ".join(rule["methods"]), "Vary": _VARY}  # fmt: skip
    if headers["Access-Control-Allow-Origin"] != "*":
        headers["Access-Control-Allow-Credentials"] = "true"  # as S3 answers a named origin
    if rule["expose"]:
        headers["Access-Control-Expose-Headers"] = ", ".join(rule["expose"])
    if "max_age" in rule:
        headers["Access-Control-Max-Age"] = str(rule["max_age"])
    return headers


def actual_headers(store, bucket: str, origin: str, method: str) -> dict:
    """The CORS headers of an actual (signed) request from origin, or {} when no rule allows it."""
    rule = match_rule(bucket_cors(store, bucket)[1], origin, method)
    return _allow(rule, origin) if rule is not None else {}


class BucketCors:
    """The `?cors` sub-resource and OPTIONS of a worker's S3 side (handlers.S3Worker)."""

    def __init__(self, s3):
        self.s3 = s3
        self.app = s3.app

    async def preflight(self, request, bucket: str) -> web.Response:
        """OPTIONS: unsigned (a browser never signs one), answered from the bucket's latest configuration."""
        origin = request.headers.get("Origin")
        method = request.headers.get("Access-Control-Request-Method")
        if not origin:
            raise S3Error(400, "BadRequest", "Insufficient information. Origin request header needed.")
        if method not in METHODS:
            raise S3Error(400, "BadRequest", f"Invalid Access-Control-Request-Method: {method or ''}")
        wanted = [name.strip().lower() for name in request.headers.get("Access-Control-Request-Headers", "").split(",")]
        exists, rules = await self.app.call(lambda: bucket_cors(self.app.store(), bucket))
        if not exists:
            raise S3Error(404, "NoSuchBucket", "The specified bucket does not exist")
        rule = match_rule(rules, origin, method, [name for name in wanted if name])
        if rule is None:
            raise S3Error(403, "AccessForbidden", "CORSResponse: This CORS request is not allowed. This is usually because the"
                          " evalution of Origin, request method / Access-Control-Request-Method or Access-Control-Request-Headers"
                          " are not whitelisted by the resource's CORS spec.")  # fmt: skip
        headers = _allow(rule, origin)
        if any(wanted):
            headers["Access-Control-Allow-Headers"] = ", ".join(name for name in wanted if name)
        return web.Response(status=200, headers=headers)

    async def handle(self, request, bucket: str) -> web.Response:
        method = request.method
        if method == "GET":
            exists, rules = await self.app.call(lambda: bucket_cors(self.app.store(), bucket))
            if not exists:
                raise S3Error(404, "NoSuchBucket", "The specified bucket does not exist")
            if rules is None:
                raise S3Error(404, "NoSuchCORSConfiguration", "The CORS configuration does not exist")
            return xml_response(cors_document(rules))
        if method == "PUT":
            body = await request.read()
            check_whole_body(request.headers, body)
            await self.app.call(lambda: self._write(bucket, stored_form(parse_cors(body))))
            return web.Response(status=200)
        if method == "DELETE":
            await self.app.call(lambda: self._write(bucket, None))
            return web.Response(status=204)
        raise S3Error(405, "MethodNotAllowed", f"{method} of ?cors is not allowed")

    def _write(self, bucket: str, stored: str | None) -> None:
        """A new version of the marker with the configuration (None: without one); nothing when it would not change.
        Conditional on the marker's latest version, so a concurrent change is never lost: tried again, a bounded
        number of times."""
        store = self.app.store()
        key = marker_key(bucket)
        try:
            for _ in range(8):
                page = store.ls_page(key, True, None, None, 1)
                if not page:
                    raise S3Error(404, "NoSuchBucket", "The specified bucket does not exist")
                found = page[0] if page[0].key == key else None  # the marker, if the bucket has one (or its tombstone)
                latest = found if found is not None and not found.deleted else None
                meta = {name: value for name, value in (latest.meta if latest else MARKER_META).items() if name != CORS_META}
                if stored is None and (latest is None or CORS_META not in latest.meta):
                    return  # no configuration: nothing to remove
                if stored is not None:
                    meta[CORS_META] = stored
                condition = {"if_version": found.version} if found is not None else {"if_absent": True}
                try:
                    store.put(key, b"", meta=meta, message="S3 PutBucketCors" if stored else "S3 DeleteBucketCors", **condition)
                    return
                except PreconditionFailed:
                    continue  # the marker changed meanwhile: read it again
            raise S3Error(409, "OperationAborted", "A conflicting conditional operation is currently in progress against"
                          " this resource. Please try again.")  # fmt: skip
        finally:
            self.app._flush_warnings(store)
