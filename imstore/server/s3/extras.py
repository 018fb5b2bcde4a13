"""A worker's S3 operations beyond put/get/delete: DeleteObjects, CopyObject, UploadPartCopy's source,
Object Lock's per-version answers (retention and legal hold: every version is held forever) and the one ACL
(`private`: the store's one owner, whose keys every request is signed with, has FULL_CONTROL)."""

from __future__ import annotations

import hashlib
from datetime import datetime
from urllib.parse import unquote

from aiohttp import web

from ...errors import KeyDeleted, KeyNotFound, PreconditionFailed, VersionNotFound
from ...model import Version
from ..bodies import file_slice
from .buckets import bucket_exists, check_bucket, marker_key
from .common import (
    KEPT_HEADERS,
    OWNER,
    delete_condition,
    etag_in,
    http_date,
    not_implemented,
    part_checksums,
    part_span,
    upload_meta,
    write_conditions,
    xml_response,  # fmt: skip
)
from .digests import check_whole_body
from .listing import etag_of
from .xml import S3Error, acl_document, document, http_time, iso_time, parse

__all__ = ["ObjectExtras", "RETAIN_UNTIL", "check_acl_headers"]

MAX_DELETE_OBJECTS = 1000
RETAIN_UNTIL = "9999-12-31T23:59:59.000Z"  # COMPLIANCE with no end: the furthest date S3's format can say


class ObjectExtras:
    def __init__(self, s3):
        self.s3 = s3
        self.app = s3.app

    # ------------------------------------------------------------ DeleteObjects
    async def delete_objects(self, request, bucket: str) -> web.Response:

        body = await request.read()
        check_whole_body(request.headers, body)
        root = parse(body, "Delete")
        quiet = (root.findtext("Quiet") or "").strip().lower() == "true"
        wanted = [(element.findtext("Key") or "", element.findtext("VersionId"),
                   (element.findtext("ETag"), element.findtext("LastModifiedTime"), element.findtext("Size")))
                  for element in root.findall("Object")]  # fmt: skip
        if not wanted or len(wanted) > MAX_DELETE_OBJECTS:
            raise S3Error(400, "MalformedXML", f"a Delete names 1 to {MAX_DELETE_OBJECTS} objects")

        def delete_all():
            store = self.app.store()
            try:
                if not bucket_exists(store, bucket):
                    raise S3Error(404, "NoSuchBucket", "The specified bucket does not exist")
                rows = []
                for key, version_id, conditions in wanted:
                    if version_id is not None:
                        rows.append(("Error", (("Key", key), ("VersionId", version_id), ("Code", "AccessDenied"),
                                               ("Message", "versions are never removed (Object Lock COMPLIANCE)"))))  # fmt: skip
                        continue
                    store_key = marker_key(bucket) + key
                    try:
                        marker = store.delete(store_key, if_version=_entry_condition(store, store_key, conditions)) if key else None
                    except (KeyNotFound, KeyDeleted):  # never written, or already deleted with only `*` asked
                        marker = None
                    except S3Error as refused:
                        rows.append(("Error", (("Key", key), ("Code", refused.code), ("Message", refused.message))))
                        continue
                    except PreconditionFailed:  # a version came in between the check and the marker: this entry only
                        rows.append(("Error", (("Key", key), ("Code", "PreconditionFailed"),
                                               ("Message", "the current version changed while it was being deleted"))))  # fmt: skip
                        continue
                    if not quiet and marker is None:
                        rows.append(("Deleted", (("Key", key),)))
                    elif not quiet:
                        rows.append(("Deleted", (("Key", key), ("DeleteMarker", True), ("DeleteMarkerVersionId", str(marker.version)))))
                return rows
            finally:
                self.app._flush_warnings(store)

        rows = await self.app.call(delete_all)
        return xml_response(document("DeleteResult", (("", rows),)))

    # ------------------------------------------------------------ copies
    def copy_source(self, store, header: str) -> Version:
        """The version `x-amz-copy-source: /bucket/key[?versionId=N]` names (it must hold bytes)."""
        path, _, query = header.partition("?")
        bucket, _, key = unquote(path).lstrip("/").partition("/")
        check_bucket(bucket)
        version_id = None
        for pair in query.split("&"):
            name, _, value = pair.partition("=")
            if name == "versionId":
                version_id = value
        if version_id is not None and not version_id.isdigit():
            raise S3Error(400, "InvalidArgument", "Invalid version id specified")
        if not key:
            raise S3Error(400, "InvalidArgument", "x-amz-copy-source names no key")
        try:
            return store.resolve(marker_key(bucket) + key, version_id)
        except KeyDeleted:
            if version_id is not None:
                raise S3Error(400, "InvalidRequest", "The source of a copy may not be a delete marker named by version id.") from None
            raise S3Error(404, "NoSuchKey", "The specified key does not exist.") from None
        except VersionNotFound:
            raise S3Error(404, "NoSuchVersion", "The specified version does not exist.") from None
        except KeyNotFound:
            if not bucket_exists(store, bucket):
                raise S3Error(404, "NoSuchBucket", "The specified bucket does not exist") from None
            raise S3Error(404, "NoSuchKey", "The specified key does not exist.") from None

    async def copy_object(self, request, bucket: str, key: str) -> web.Response:
        """A new version naming the source's object: content-addressed, so no byte is copied."""

        headers = request.headers
        replace = headers.get("x-amz-metadata-directive", "COPY").upper() == "REPLACE"
        store_key = marker_key(bucket) + key

        def copy():
            store = self.app.store()
            try:
                if not bucket_exists(store, bucket):
                    raise S3Error(404, "NoSuchBucket", "The specified bucket does not exist")
                source = self.copy_source(store, headers["x-amz-copy-source"])
                _check_copy_conditions(headers, source)
                if replace:
                    meta = upload_meta(headers)
                    content_type = headers.get("Content-Type") or None
                else:
                    meta = {name: value for name, value in source.meta.items() if name.startswith("x-amz-meta-") or name in KEPT_HEADERS}
                    content_type = source.content_type
                    if source.key == store_key:
                        raise S3Error(400, "InvalidRequest", "This copy request is illegal because it is trying to copy an object"
                                      " to itself without changing the object's metadata, storage class, website redirect"
                                      " location or encryption attributes.")  # fmt: skip
                if "s3-etag" in source.meta:
                    meta["s3-etag"] = source.meta["s3-etag"]
                conditions = write_conditions(store, store_key, headers)
                result = store.put_object(store_key, source.hash, content_type=content_type, meta=meta, **conditions)
                return source, result.version
            finally:
                self.app._flush_warnings(store)

        source, version = await self.app.call(copy)
        body = document("CopyObjectResult", (("LastModified", iso_time(version.time_ns)), ("ETag", etag_of(version))))
        return xml_response(body, headers={"x-amz-version-id": str(version.version), "x-amz-copy-source-version-id": str(source.version)})

    def copy_part_source(self, store, headers) -> tuple[object, object, Version]:
        """(the bytes of an UploadPartCopy's source as pieces, their md5 filled as they pass, the source version), with
        x-amz-copy-source-range applied; the source is verified whole first, then sliced from its file."""

        source = self.copy_source(store, headers["x-amz-copy-source"])
        _check_copy_conditions(headers, source)
        reader = store.open_stored(source)
        start, end = 0, reader.size
        wanted = headers.get("x-amz-copy-source-range")
        if wanted is not None:
            start, end = _copy_range(wanted, reader.size)
        reader.verify()
        md5 = hashlib.md5(usedforsecurity=False)

        def pieces():
            whole = reader.local_file() is None  # bytes from the read cache, not a file
            for piece in [reader.read()[start:end]] if whole else file_slice(reader, start, end - start):
                md5.update(piece)
                yield piece

        return pieces(), md5, source

    # ------------------------------------------------------------ Object Lock per version
    async def lock_answer(self, request, bucket: str, key: str, query: dict) -> web.Response:

        await self.app.call(lambda: self._existing_version(bucket, key, query.get("versionId")))
        if request.method == "GET":
            if "retention" in query:
                return xml_response(document("Retention", (("Mode", "COMPLIANCE"), ("RetainUntilDate", RETAIN_UNTIL))))
            return xml_response(document("LegalHold", (("Status", "ON"),)))
        root = parse(await request.read(), "Retention" if "retention" in query else "LegalHold")
        if "retention" in query:
            if root.findtext("Mode") != "COMPLIANCE":
                raise S3Error(403, "AccessDenied", "every version is retained in COMPLIANCE mode with no end; it cannot be weakened")
            return web.Response(status=200)  # any date is within "no end": nothing to extend
        if root.findtext("Status") != "ON":
            raise S3Error(403, "AccessDenied", "every version is held forever; a legal hold cannot be lifted")
        return web.Response(status=200)

    def _existing_version(self, bucket: str, key: str, version_id: str | None) -> Version:
        store = self.app.store()
        if version_id is not None and not version_id.isdigit():
            raise S3Error(400, "InvalidArgument", "Invalid version id specified")
        try:
            return store.resolve(marker_key(bucket) + key, version_id)
        except (KeyNotFound, KeyDeleted):
            raise S3Error(404, "NoSuchKey", "The specified key does not exist.") from None
        except VersionNotFound:
            raise S3Error(404, "NoSuchVersion", "The specified version does not exist.") from None

    # ------------------------------------------------------------ the one ACL
    async def acl(self, request, bucket: str, key: str, query: dict) -> web.Response:
        """Get/PutBucketAcl and Get/PutObjectAcl, as S3 answers with ACLs disabled (BucketOwnerEnforced, S3-23): the
        owner has FULL_CONTROL of every bucket and version; a PUT restating that is 200 and changes nothing."""
        if key:
            await self.app.call(lambda: self._existing_version(bucket, key, query.get("versionId")))
        else:
            await self.s3._existing(bucket)
        if request.method == "GET":
            return xml_response(acl_document(OWNER))
        if request.method != "PUT":
            raise not_implemented(f"{request.method} ?acl")
        body = await request.read()
        check_acl_headers(request.headers)
        if "x-amz-acl" not in request.headers and not body:
            raise S3Error(400, "MalformedACLError", "an ACL is given by x-amz-acl or an AccessControlPolicy body")
        if body:
            root = parse(body, "AccessControlPolicy")
            given = [(grant.findtext("Grantee/ID"), grant.findtext("Permission")) for grant in root.iter("Grant")]
            if given != [(OWNER_ID, "FULL_CONTROL")]:
                raise _acls_disabled()
        return web.Response(status=200)

    # ------------------------------------------------------------ GetObjectAttributes
    async def object_attributes(self, request, bucket: str, key: str, query: dict) -> web.Response:
        """GET ?attributes: what x-amz-object-attributes asks for, from the version's record (no byte is read)."""
        wanted = {name.strip() for name in request.headers.get("x-amz-object-attributes", "").split(",") if name.strip()}
        if not wanted or wanted - {"ETag", "Checksum", "ObjectParts", "StorageClass", "ObjectSize"}:
            raise S3Error(400, "InvalidArgument", "x-amz-object-attributes names ETag, Checksum, ObjectParts, StorageClass, ObjectSize")
        found = await self.app.call(lambda: self._existing_version(bucket, key, query.get("versionId")))
        checksums = [(f"Checksum{name[len('s3-checksum-'):].upper()}", value) for name, value in sorted(found.meta.items())
                     if name.startswith("s3-checksum-") and name != "s3-checksum-type"]  # fmt: skip
        kind = found.meta.get("s3-checksum-type", "FULL_OBJECT")
        children = (
            ("ETag", etag_of(found).strip('"') if "ETag" in wanted else None),
            ("Checksum", (*checksums, ("ChecksumType", kind)) if "Checksum" in wanted and checksums else None),
            ("ObjectParts", _object_parts(found, request.headers) if "ObjectParts" in wanted else None),
            ("StorageClass", "STANDARD" if "StorageClass" in wanted else None),
            ("ObjectSize", found.size if "ObjectSize" in wanted else None),
        )
        headers = {"Last-Modified": http_time(found.time_ns), "x-amz-version-id": str(found.version)}
        return xml_response(document("GetObjectAttributesResponse", children), headers=headers)


OWNER_ID = dict(OWNER)["ID"]
# The ACLs that say what is true of every bucket and version: its owner (the bucket's) has FULL_CONTROL, no one else.
OWNER_ONLY = frozenset({"private", "bucket-owner-full-control"})


def _acls_disabled() -> S3Error:
    return S3Error(400, "AccessControlListNotSupported", "The bucket does not allow ACLs")


def check_acl_headers(headers, creating_bucket: bool = False) -> None:
    """A write may name an ACL only if it is the owner's FULL_CONTROL alone (as S3 with ACLs disabled): any other
    canned ACL or grant would be ignored here, so it is refused (400), never taken and then not kept."""
    canned = headers.get("x-amz-acl")
    grants = {name.lower(): value for name, value in headers.items() if name.lower().startswith("x-amz-grant-")}
    owner_grant = grants.get("x-amz-grant-full-control", "").replace('"', "").replace(" ", "") == f"id={OWNER_ID}"
    if (canned is not None and canned not in OWNER_ONLY) or (grants and (len(grants) > 1 or not owner_grant)):
        if creating_bucket:
            raise S3Error(400, "InvalidBucketAclWithObjectOwnership", "Bucket cannot have ACLs set with ObjectOwnership's"
                          " BucketOwnerEnforced setting")  # fmt: skip
        raise _acls_disabled()


def _object_parts(found: Version, headers):
    """ObjectParts of a multipart version (its part sizes as kept in `s3-parts`), paged; None for a single-part one."""
    layout = found.meta.get("s3-parts")
    if layout is None:
        return None
    marker, limit = headers.get("x-amz-part-number-marker", "0"), headers.get("x-amz-max-parts", "1000")
    if not marker.isdigit() or not limit.isdigit():
        raise S3Error(400, "InvalidArgument", "part-number-marker and max-parts are numbers")
    count = part_span(layout, "1", found.size)[2]
    shown = list(range(int(marker) + 1, min(count, int(marker) + int(limit)) + 1))
    kept = part_checksums(found.meta)
    rows = [("Part", (("PartNumber", number), ("Size", _span_size(layout, number, found.size)),
                      (f"Checksum{kept[0].upper()}", kept[1][number - 1]) if kept else ("Checksum", None)))
            for number in shown]  # fmt: skip
    return (("PartsCount", count), ("PartNumberMarker", int(marker)), ("NextPartNumberMarker", shown[-1] if shown else None),
            ("MaxParts", int(limit)), ("IsTruncated", bool(shown) and shown[-1] < count), ("", rows))  # fmt: skip


def _span_size(layout: str, number: int, size: int) -> int:
    start, end, _count = part_span(layout, str(number), size)
    return end - start


def _entry_condition(store, store_key: str, conditions: tuple) -> int | None:
    """A DeleteObjects entry's ETag, LastModifiedTime and Size, as a conditional DELETE's headers say them."""
    etag, modified, size = conditions
    if modified is not None and http_date(modified) is None:  # boto3 sends an HTTP date here; ISO 8601 is accepted too
        try:
            modified = http_time(int(datetime.fromisoformat(modified.replace("Z", "+00:00")).timestamp() * 1_000_000_000))
        except ValueError:
            raise S3Error(400, "InvalidArgument", "LastModifiedTime is neither an HTTP date nor an ISO 8601 time") from None
    return delete_condition(store, store_key, etag, modified, size)


def _copy_range(text: str, size: int) -> tuple[int, int]:
    """x-amz-copy-source-range: exactly bytes=FIRST-LAST inside the source (S3 allows no other form)."""
    unit, _, span = text.partition("=")
    first, dash, last = span.partition("-")
    if unit != "bytes" or not dash or not first.isdigit() or not last.isdigit() or int(first) > int(last):
        raise S3Error(400, "InvalidArgument", "The x-amz-copy-source-range value must be of the form bytes=first-last")
    if int(last) >= size:
        raise S3Error(416, "InvalidRange", "The requested range is not satisfiable")
    return int(first), int(last) + 1


def _check_copy_conditions(headers, source: Version) -> None:

    etag = etag_of(source)
    seconds = source.time_ns // 1_000_000_000
    failed = S3Error(412, "PreconditionFailed", "At least one of the pre-conditions you specified did not hold")
    if_match = headers.get("x-amz-copy-source-if-match")
    if if_match is not None and not etag_in(if_match, etag):
        raise failed
    if_none_match = headers.get("x-amz-copy-source-if-none-match")
    if if_none_match is not None and etag_in(if_none_match, etag):
        raise failed
    unmodified = http_date(headers.get("x-amz-copy-source-if-unmodified-since"))
    if if_match is None and unmodified is not None and seconds > unmodified:
        raise failed
    modified = http_date(headers.get("x-amz-copy-source-if-modified-since"))
    if if_none_match is None and modified is not None and seconds <= modified:
        raise failed
