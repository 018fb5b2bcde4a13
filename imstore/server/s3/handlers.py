"""A worker's S3 operations over the Store API (the gateway has checked the signature already).

Versioning is always Enabled and Object Lock always on in COMPLIANCE mode: a PUT adds a version
(its id is the version number), a DELETE adds a delete marker, and nothing removes a version.
Unknown operations are 501 NotImplemented, never a 500.
"""

from __future__ import annotations

import asyncio
import os
import sys
from urllib.parse import unquote_to_bytes

from aiohttp import web

from ...errors import ImstoreError, KeyDeleted, KeyNotFound, PreconditionFailed, VersionNotFound
from ...model import Version
from ...transfer import SMALL_OBJECT
from ..bodies import streamed_body
from ..headers import parse_range
from ..protocol import S3_CONTEXT, without_paths
from .buckets import MARKER_META, bucket_exists, bucket_stats, buckets, check_bucket, marker_key, valid_bucket
from .common import (
    KEPT_HEADERS,
    LOCK_HEADERS,
    OWNER,
    RESPONSE_OVERRIDES,
    check_conditions,
    delete_condition,
    not_implemented,
    part_checksums,
    part_span,
    upload_body,
    upload_meta,
    write_conditions,
    xml_response,
)
from .cors import BucketCors, actual_headers
from .extras import ObjectExtras, check_acl_headers
from .front import caller_from_header
from .listing import etag_of, list_object_versions, list_objects
from .multipart_ops import MultipartOperations
from .sigv4 import Caller, query_pairs
from .xml import XML_TYPE, S3Error, document, error_document, error_from_imstore, http_time, iso_time, parse

__all__ = ["S3Worker", "s3_worker"]

CORS_ANSWER = "s3_cors"  # the request's CORS headers, for an answer streamed before _route returns

# Sub-resources of a bucket or an object that are not offered: 501, so a client knows at once.
_UNSUPPORTED = frozenset({"policy", "cors", "lifecycle", "tagging", "website", "logging", "notification", "replication",
                          "encryption", "accelerate", "requestPayment", "inventory", "analytics", "metrics", "ownershipControls",
                          "publicAccessBlock", "intelligent-tiering", "torrent", "restore", "select", "attributes"})  # fmt: skip


def s3_worker(app) -> S3Worker:
    """The S3 side of a worker, made at its first S3 request."""
    found = getattr(app, "_s3_worker", None)
    if found is None:
        found = app._s3_worker = S3Worker(app)
    return found


def split_target(raw_path: str) -> tuple[str, str]:
    """(bucket, object key) from a path-style target, percent-decoded as UTF-8."""
    try:
        path = unquote_to_bytes(raw_path).decode("utf-8")
    except UnicodeDecodeError:
        raise S3Error(400, "InvalidURI", "the path is not valid UTF-8 once percent-decoded") from None
    bucket, _, key = path[1:].partition("/")
    return bucket, key


class S3Worker:
    """S3 requests handed on by the gateway's S3 port, answered over the worker's stores and pool."""

    def __init__(self, app):
        self.app = app
        self.multipart = MultipartOperations(self)
        self.extras = ObjectExtras(self)
        self.cors = BucketCors(self)

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        raw_path, _, raw_query = request.raw_path.partition("?")
        cors: dict = {}
        try:
            caller = caller_from_header(request.headers[S3_CONTEXT])
            query = dict(query_pairs(raw_query))
            bucket, key = split_target(raw_path)
            if request.method == "OPTIONS":  # a CORS preflight: the only request the front lets through unsigned
                return await self.cors.preflight(request, check_bucket(bucket))
            if caller.scope not in ("read", "write"):
                raise S3Error(403, "AccessDenied", "only a CORS preflight (OPTIONS) may be unsigned")
            origin = request.headers.get("Origin")
            if origin and valid_bucket(bucket):  # a browser's actual request: the headers of the rule that allows it
                cors = await self.app.call(lambda: actual_headers(self.app.store(), bucket, origin, request.method))
                request[CORS_ANSWER] = cors
            response = await self._route(request, caller, bucket, key, query)
            if cors and not response.prepared:
                response.headers.update(cors)
            return response
        except S3Error as exc:
            return _error(exc, raw_path, cors)
        except ImstoreError as exc:
            detail = str(exc) or exc.title
            public = without_paths(detail, self.app.private_paths)
            if public != detail:
                print(f"imstore worker {os.getpid()}: S3 {request.method} {raw_path}: {detail}", file=sys.stderr, flush=True)
            return _error(error_from_imstore(exc, public), raw_path, cors)
        except (ConnectionError, asyncio.CancelledError):
            raise
        except Exception as exc:
            import traceback

            traceback.print_exc()
            return _error(S3Error(500, "InternalError", f"internal error: {type(exc).__name__}"), raw_path, cors)

    async def _route(self, request, caller: Caller, bucket: str, key: str, query: dict) -> web.StreamResponse:
        method = request.method
        if not bucket:
            if method == "GET":
                return await self.list_buckets(query)
            raise not_implemented(f"{method} /")
        check_bucket(bucket)
        if any(name.lower().startswith("x-amz-server-side-encryption") for name in request.headers):
            # Never store plaintext a client believes encrypted (SSE-C, SSE-S3, KMS): encrypt on the client (restic does).
            raise not_implemented("server-side encryption")
        if method in ("PUT", "POST") and "acl" not in query:  # an ACL given with a write: only the one that holds (S3-23)
            check_acl_headers(request.headers, creating_bucket=not key and not query)
        if not key:
            return await self._bucket_operation(request, method, bucket, query)
        if "attributes" in query and method == "GET":
            return await self.extras.object_attributes(request, bucket, key, query)
        if "acl" in query:
            return await self.extras.acl(request, bucket, key, query)
        unsupported = _UNSUPPORTED & query.keys()
        if unsupported:
            raise not_implemented(f"{method} ?{sorted(unsupported)[0]}")
        if "uploadId" in query or (method == "POST" and "uploads" in query):
            return await self.multipart.handle(request, caller, bucket, key, query)
        if ("retention" in query or "legal-hold" in query) and method in ("GET", "PUT"):
            return await self.extras.lock_answer(request, bucket, key, query)
        if method in ("GET", "HEAD"):
            return await self.get_object(request, bucket, key, query)
        if method == "PUT":
            if "x-amz-copy-source" in request.headers:
                return await self.extras.copy_object(request, bucket, key)
            return await self.put_object(request, caller, bucket, key)
        if method == "DELETE":
            return await self.delete_object(bucket, key, query, request.headers)
        raise not_implemented(f"{method} of an object")

    async def _bucket_operation(self, request, method: str, bucket: str, query: dict) -> web.StreamResponse:
        if method == "PUT" and not query:
            return await self.create_bucket(request, bucket)
        if "cors" in query:
            return await self.cors.handle(request, bucket)
        if "acl" in query:
            return await self.extras.acl(request, bucket, "", query)
        if method == "PUT" and "versioning" in query:
            return await self.put_bucket_versioning(request, bucket)
        if method == "PUT" and "object-lock" in query:
            return await self.put_object_lock(request, bucket)
        if method == "HEAD":
            await self._existing(bucket)
            headers = {"x-amz-bucket-region": "us-east-1"}
            if query.get("read-stats") == "true":  # RGW's extension, asked for: it reads every key of the bucket
                count, size = await self.app.call(lambda: bucket_stats(self.app.store(), bucket))
                headers.update({"x-rgw-object-count": str(count), "x-rgw-bytes-used": str(size)})
            return web.Response(status=200, headers=headers)
        if method == "DELETE" and not query:
            raise S3Error(403, "AccessDenied", "buckets are never deleted: Object Lock keeps every version")
        if method == "POST" and "delete" in query:
            return await self.extras.delete_objects(request, bucket)
        if method != "GET":
            raise not_implemented(f"{method} of a bucket with ?{'&'.join(query)}")
        await self._existing(bucket)
        if "location" in query:
            return xml_response(document("LocationConstraint", ()))
        if "versioning" in query:
            return xml_response(document("VersioningConfiguration", (("Status", "Enabled"),)))
        if "object-lock" in query:  # "no end" has no form in this document: 100 years is the longest clients expect
            return xml_response(document("ObjectLockConfiguration", (("ObjectLockEnabled", "Enabled"),
                                         ("Rule", (("DefaultRetention", (("Mode", "COMPLIANCE"), ("Years", 100))),)))))  # fmt: skip
        if "versions" in query:
            return xml_response(await self.app.call(lambda: list_object_versions(self.app.store(), bucket, query)))
        if "uploads" in query:
            return await self.multipart.list_uploads(bucket, query)
        unsupported = _UNSUPPORTED & query.keys()
        if unsupported:
            raise not_implemented(f"GET ?{sorted(unsupported)[0]}")
        v2 = query.get("list-type") == "2"
        return xml_response(await self.app.call(lambda: list_objects(self.app.store(), bucket, query, v2)))

    async def _existing(self, bucket: str) -> None:
        if not await self.app.call(lambda: bucket_exists(self.app.store(), bucket)):
            raise S3Error(404, "NoSuchBucket", "The specified bucket does not exist")

    # ------------------------------------------------------------ buckets
    async def list_buckets(self, query: dict) -> web.Response:
        prefix, after = query.get("prefix", ""), query.get("continuation-token", "")
        limit_text = query.get("max-buckets", "10000")
        if not limit_text.isdigit() or not 1 <= int(limit_text) <= 10000:
            raise S3Error(400, "InvalidArgument", "max-buckets must be 1 to 10000")
        limit = int(limit_text)

        def page():
            shown = []
            for name, version in buckets(self.app.store(), after):
                if name.startswith(prefix):
                    if len(shown) == limit:
                        return shown, True
                    shown.append((name, version))
            return shown, False

        found, truncated = await self.app.call(page)
        rows = [("Bucket", (("Name", name), ("CreationDate", iso_time(version.time_ns)))) for name, version in found]
        token = found[-1][0] if truncated else None
        return xml_response(document("ListAllMyBucketsResult", (("Owner", OWNER), ("Buckets", tuple([("", rows)])),
                                                                ("ContinuationToken", token), ("Prefix", prefix or None))))  # fmt: skip

    async def create_bucket(self, request, bucket: str) -> web.Response:
        def create():
            store = self.app.store()
            try:  # again: 200 and nothing written, as S3 answers in us-east-1 (there are no other owners here)
                if not bucket_exists(store, bucket):
                    store.put(marker_key(bucket), b"", meta=MARKER_META, if_absent=True)
            except PreconditionFailed:
                pass  # created meanwhile: the same outcome
            finally:
                self.app._flush_warnings(store)

        await request.read()  # a CreateBucketConfiguration (a region) is accepted and not needed
        await self.app.call(create)
        return web.Response(status=200, headers={"Location": "/" + bucket})

    async def put_bucket_versioning(self, request, bucket: str) -> web.Response:

        await self._existing(bucket)
        root = parse(await request.read(), "VersioningConfiguration")
        status = root.findtext("Status")
        if status != "Enabled":
            raise S3Error(409, "InvalidBucketState", "versioning is always Enabled on imstore: nothing is ever removed")
        return web.Response(status=200)

    async def put_object_lock(self, request, bucket: str) -> web.Response:
        """Object Lock is always on in COMPLIANCE mode with no end: such a configuration changes nothing,
        a GOVERNANCE default (weaker) is refused."""

        await self._existing(bucket)
        root = parse(await request.read(), "ObjectLockConfiguration")
        if root.findtext("ObjectLockEnabled") != "Enabled":
            raise S3Error(400, "MalformedXML", "ObjectLockEnabled must be Enabled")
        mode = root.findtext("Rule/DefaultRetention/Mode")
        if mode not in (None, "COMPLIANCE"):
            raise S3Error(403, "AccessDenied", "Object Lock is COMPLIANCE with no end here; a GOVERNANCE default would weaken it")
        return web.Response(status=200)

    # ------------------------------------------------------------ objects
    async def get_object(self, request, bucket: str, key: str, query: dict) -> web.StreamResponse:
        store_key = marker_key(bucket) + key
        version_id = query.get("versionId")
        if version_id is not None and not version_id.isdigit():
            raise S3Error(400, "InvalidArgument", "Invalid version id specified")

        def resolve():
            store = self.app.store()
            try:
                found, reader = store.open_version(store_key, version_id)  # confirmed against the log once
            except KeyDeleted:
                raise self._deleted(store, store_key, version_id) from None
            except (KeyNotFound, VersionNotFound) as exc:
                if not bucket_exists(store, bucket):
                    raise S3Error(404, "NoSuchBucket", "The specified bucket does not exist") from None
                if version_id is not None:
                    raise S3Error(404, "NoSuchVersion", "The specified version does not exist.") from None
                raise S3Error(404, "NoSuchKey", "The specified key does not exist.") from exc
            finally:
                self.app._flush_warnings(store)
            return found, reader, (reader.read() if request.method == "GET" and reader.size <= SMALL_OBJECT else None)

        found, reader, data = await self.app.call(resolve)
        return await self._send(request, found, reader, data)

    @staticmethod
    def _deleted(store, store_key: str, version_id: str | None) -> S3Error:
        number = version_id or str(store.history(store_key, 1)[-1].version)
        headers = {"x-amz-delete-marker": "true", "x-amz-version-id": number}
        if version_id is not None:
            return S3Error(405, "MethodNotAllowed", "The specified method is not allowed against this resource.", headers)
        return S3Error(404, "NoSuchKey", "The specified key does not exist.", headers)

    async def _send(self, request, found: Version, reader, data: bytes | None) -> web.StreamResponse:
        etag = etag_of(found)
        headers = {"ETag": etag, "Last-Modified": http_time(found.time_ns), "x-amz-version-id": str(found.version),
                   "Accept-Ranges": "bytes", "Content-Type": found.content_type or "binary/octet-stream",
                   "Content-Security-Policy": "sandbox"}  # fmt: skip
        headers.update({name: value for name, value in found.meta.items() if name.startswith("x-amz-meta-")})
        headers.update({name.title(): found.meta[name] for name in KEPT_HEADERS if name in found.meta})  # as overrides spell them
        query = dict(query_pairs(request.raw_path.partition("?")[2]))
        headers.update({header: query[name] for name, header in RESPONSE_OVERRIDES.items() if name in query})
        headers.update(LOCK_HEADERS)
        headers.update(request.get(CORS_ANSWER, ()))  # before a streamed answer's headers are sent
        if request.headers.get("x-amz-checksum-mode", "").upper() == "ENABLED" and "Range" not in request.headers:
            headers.update({f"x-amz-{name[3:]}": value for name, value in found.meta.items() if name.startswith("s3-checksum-")})
        check_conditions(request.headers, etag, found.time_ns, headers)
        size = reader.size
        start, end, status = 0, size, 200
        range_header = request.headers.get("Range")
        part = query.get("partNumber")
        if part is not None:
            start, end, count = part_span(found.meta.get("s3-parts"), part, size)
            headers["x-amz-mp-parts-count"] = str(count)
            if (kept := part_checksums(found.meta)) and f"x-amz-checksum-{kept[0]}" in headers:  # the part's, not the whole's
                headers[f"x-amz-checksum-{kept[0]}"] = kept[1][int(part) - 1]
            if count > 1:
                status = 206
                headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        elif range_header:
            wanted = parse_range(range_header, size)
            if wanted == "unsatisfiable":
                raise S3Error(416, "InvalidRange", "The requested range is not satisfiable", {"Content-Range": f"bytes */{size}"})
            if wanted is not None:
                start, end = wanted
                status = 206
                headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        return await self.app.send_span(request, reader, data, start, end, status, headers)

    async def put_object(self, request, caller: Caller, bucket: str, key: str) -> web.Response:
        store_key = marker_key(bucket) + key
        headers = request.headers
        meta = upload_meta(headers)
        content_type = headers.get("Content-Type") or None

        def put():
            store = self.app.store()
            try:
                if not bucket_exists(store, bucket):
                    raise S3Error(404, "NoSuchBucket", "The specified bucket does not exist")
                conditions = write_conditions(store, store_key, headers)
                digests, body = upload_body(caller, headers, pieces)
                object_id, size = store.write_object(body)
                decoded = headers.get("x-amz-decoded-content-length")
                if decoded is not None and decoded.isdigit() and int(decoded) != size:
                    raise S3Error(400, "IncompleteBody", "the body's decoded length is not x-amz-decoded-content-length")
                etag = digests.md5.hexdigest()
                checksums = {f"s3-{name[len('x-amz-'):]}": value for name, value in digests.checksum_headers().items()}
                result = store.put_object(store_key, object_id, content_type=content_type,
                                          meta={**meta, **checksums, "s3-etag": etag}, **conditions)  # fmt: skip
                return result.version, digests.checksum_headers()
            finally:
                self.app._flush_warnings(store)

        async with streamed_body(request.content) as pieces:
            version, checksums = await self.app.call(put)
        return web.Response(status=200, headers={"ETag": etag_of(version), "x-amz-version-id": str(version.version), **checksums})

    async def delete_object(self, bucket: str, key: str, query: dict, headers) -> web.Response:
        if "versionId" in query:
            raise S3Error(403, "AccessDenied", "versions are never removed: Object Lock (COMPLIANCE) keeps every version")
        store_key = marker_key(bucket) + key
        wanted = (headers.get("If-Match"), headers.get("x-amz-if-match-last-modified-time"), headers.get("x-amz-if-match-size"))

        def delete():
            store = self.app.store()
            try:
                if not bucket_exists(store, bucket):
                    raise S3Error(404, "NoSuchBucket", "The specified bucket does not exist")
                return store.delete(store_key, if_version=delete_condition(store, store_key, *wanted))
            except (KeyNotFound, KeyDeleted):
                return None  # S3 answers 204 for a key that is not there; no marker is added on top of one
            finally:
                self.app._flush_warnings(store)

        marker = await self.app.call(delete)
        headers = {"x-amz-delete-marker": "true", "x-amz-version-id": str(marker.version)} if marker is not None else {}
        return web.Response(status=204, headers=headers)


def _error(error: S3Error, resource: str, cors: dict | None = None) -> web.Response:
    body = error_document(error.code, error.message, resource) if error.status not in (304,) else None
    return web.Response(status=error.status, body=body, headers={**error.headers, **(cors or {}), "Content-Type": XML_TYPE})
