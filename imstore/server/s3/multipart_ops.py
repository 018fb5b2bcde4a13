"""A worker's S3 multipart operations: Create, UploadPart, Complete, Abort, ListParts, ListMultipartUploads."""

from __future__ import annotations

import asyncio
import base64
import sys
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web

from ..bodies import streamed_body
from .buckets import bucket_exists, marker_key
from .common import OWNER, not_implemented, parts_layout, upload_body, upload_meta, write_conditions, xml_response
from .digests import CHECKSUMS, multipart_checksum
from .multipart import MAX_PART_NUMBER, Uploads
from .sigv4 import Caller
from .xml import S3Error, document, iso_time, parse

__all__ = ["MultipartOperations", "declared_length", "expire_uploads_periodically"]

SWEEP_INTERVAL = 3600.0  # seconds between two looks for expired uploads, in each worker
PART_THREADS = 16  # parts received at once by one worker: aws-cli sends 10, rclone 4 per file and 4 files


async def expire_uploads_periodically(app, max_age: float, interval: float = SWEEP_INTERVAL) -> None:
    """Remove the uploads nothing touched for max_age seconds now (at the worker's start), then every interval (S3-11)."""
    uploads = Uploads(app.store_root)
    while True:
        try:
            removed = await app.call(lambda: uploads.expire(max_age))
        except OSError as exc:
            removed = 0
            print(f"imstore serve: cannot remove expired S3 uploads: {exc}", file=sys.stderr, flush=True)
        if removed:
            print(f"imstore serve: removed {removed} S3 upload(s) untouched for {max_age / 86400:g} days", file=sys.stderr, flush=True)
        await asyncio.sleep(interval)  # a timer: nothing to wait for but the time


def _upload_checksum(headers) -> tuple[str, str] | None:
    """CreateMultipartUpload's x-amz-checksum-algorithm and -type: (algorithm, COMPOSITE or FULL_OBJECT), or None."""
    algorithm = headers.get("x-amz-checksum-algorithm", "").lower()
    if not algorithm:
        return None
    if algorithm not in CHECKSUMS:
        raise S3Error(400, "InvalidRequest", f"x-amz-checksum-algorithm must be one of {', '.join(CHECKSUMS).upper()}")
    kind = headers.get("x-amz-checksum-type", "FULL_OBJECT" if algorithm == "crc64nvme" else "COMPOSITE").upper()
    full = kind == "FULL_OBJECT"  # a CRC of the whole object: SHA digests cannot be combined, CRC64NVME is only that
    if kind not in ("COMPOSITE", "FULL_OBJECT") or (full and algorithm.startswith("sha")) or (not full and algorithm == "crc64nvme"):
        raise S3Error(400, "InvalidRequest", f"a {algorithm.upper()} checksum of type {kind} is not offered")
    return algorithm, kind


def _object_checksum(upload, stored: list, wanted: list, given: dict, headers) -> tuple[list | None, str]:
    """The checksum of a completed upload that asked for one: ([algorithm, value, type], the parts' own, comma-joined),
    after each part's checksum listed in the request is matched against the one it was uploaded with (else BadDigest)."""
    if upload.checksum is None:
        return None, ""
    algorithm, kind = upload.checksum
    parts = {part.number: part for part in stored}
    values, sizes = [], []
    for number, _etag in wanted:
        part = parts.get(number)
        kept = dict(part.checksums).get(algorithm) if part is not None else None
        if kept is None:
            raise S3Error(400, "InvalidPart", f"part {number} was not uploaded with an x-amz-checksum-{algorithm}")
        if given.get(number, {}).get(algorithm, kept) != kept:  # (a part listed without one: the one it was uploaded with)
            raise S3Error(400, "BadDigest", f"part {number}'s checksum is not the one it was uploaded with")
        values.append(kept)
        sizes.append(part.size)
    value = multipart_checksum(algorithm, kind, [base64.b64decode(kept) for kept in values], sizes)
    claimed = headers.get(f"x-amz-checksum-{algorithm}")
    if claimed is not None and claimed.strip() != value:
        raise S3Error(400, "BadDigest", f"The x-amz-checksum-{algorithm} you specified did not match the calculated checksum.")
    return [algorithm, value, kind], ",".join(values)


def last_listing_of_each_part(wanted: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """A part number listed again right after itself (both uploads of a part sent twice) counts once, as its last
    listing, as S3 takes the upload that finished last; a number listed again later is still InvalidPartOrder."""
    kept: list[tuple[int, str]] = []
    for number, etag in wanted:
        if kept and kept[-1][0] == number:
            kept[-1] = (number, etag)
        else:
            kept.append((number, etag))
    return kept


def declared_length(caller: Caller, headers) -> int | None:
    """A part's length as the request declares it before its body, if it does (aws-chunked: the decoded length)."""
    decoded = headers.get("x-amz-decoded-content-length")
    if decoded is not None:
        return int(decoded) if decoded.isdigit() else None
    chunked = caller.payload.startswith("STREAMING") or "aws-chunked" in headers.get("Content-Encoding", "")
    length = headers.get("Content-Length")
    return int(length) if length is not None and length.isdigit() and not chunked else None


class MultipartOperations:
    def __init__(self, s3):
        self.s3 = s3
        self.app = s3.app
        self.uploads = Uploads(self.app.store_root)
        # Parts are written by threads of their own (S3-27): a part holds its thread while its body arrives, and
        # one aws-cli sends ten at once, all to this worker (Supervisor.pick): the store threads stay for the rest.
        self.part_threads = ThreadPoolExecutor(PART_THREADS, thread_name_prefix="imstore-part")

    async def handle(self, request: web.BaseRequest, caller: Caller, bucket: str, key: str, query: dict) -> web.StreamResponse:

        method = request.method
        if method == "POST" and "uploads" in query:
            return await self.create(request, bucket, key)
        upload_id = query["uploadId"]
        if method == "PUT" and "partNumber" in query:
            return await self.upload_part(request, caller, bucket, key, upload_id, query["partNumber"])
        if method == "POST":
            return await self.complete(request, bucket, key, upload_id)
        if method == "DELETE":
            await self.app.call(lambda: (self.uploads.get(upload_id, bucket, key), self.uploads.remove(upload_id)))
            return web.Response(status=204)
        if method == "GET":
            return await self.list_parts(bucket, key, upload_id, query)
        raise not_implemented(f"{method} with uploadId")

    async def create(self, request, bucket: str, key: str) -> web.Response:

        headers = request.headers
        meta = upload_meta(headers)

        checksum = _upload_checksum(headers)

        def create():
            if not bucket_exists(self.app.store(), bucket):
                raise S3Error(404, "NoSuchBucket", "The specified bucket does not exist")
            return self.uploads.create(bucket, key, headers.get("Content-Type") or None, meta, checksum)

        upload_id = await self.app.call(create)
        answer = {"x-amz-checksum-algorithm": checksum[0].upper(), "x-amz-checksum-type": checksum[1]} if checksum else {}
        return xml_response(document("InitiateMultipartUploadResult", (("Bucket", bucket), ("Key", key), ("UploadId", upload_id))),
                            headers=answer)  # fmt: skip

    async def upload_part(self, request, caller: Caller, bucket: str, key: str, upload_id: str, number_text: str) -> web.Response:

        if not number_text.isdigit() or not 1 <= int(number_text) <= MAX_PART_NUMBER:
            raise S3Error(400, "InvalidArgument", f"Part number must be an integer between 1 and {MAX_PART_NUMBER}, inclusive")
        copying = "x-amz-copy-source" in request.headers

        def write():
            upload = self.uploads.get(upload_id, bucket, key)
            if copying:  # UploadPartCopy: the part's bytes come from a stored version
                store = self.app.store()
                body, md5, source = self.s3.extras.copy_part_source(store, request.headers)
                return self.uploads.write_part(upload, int(number_text), body, md5), {"x-amz-copy-source-version-id": str(source.version)}
            digests, body = upload_body(caller, request.headers, pieces)
            sent = lambda: {name[len("x-amz-checksum-") :]: value for name, value in digests.checksum_headers().items()}  # noqa: E731
            part = self.uploads.write_part(upload, int(number_text), body, digests.md5, declared_length(caller, request.headers), sent)
            return part, digests.checksum_headers()

        if copying:  # its bytes come from the store (a store thread), not from a body
            part, checksums = await self.app.call(write)
            result = document("CopyPartResult", (("LastModified", iso_time(part.modified_ns)), ("ETag", f'"{part.etag}"')))
            return xml_response(result, headers=checksums)  # here: the source's version id
        async with streamed_body(request.content) as pieces:
            part, checksums = await asyncio.get_running_loop().run_in_executor(self.part_threads, write)
        return web.Response(status=200, headers={"ETag": f'"{part.etag}"', **checksums})

    async def complete(self, request, bucket: str, key: str, upload_id: str) -> web.Response:

        root = parse(await request.read(), "CompleteMultipartUpload")
        wanted, given = [], {}
        for element in root.findall("Part"):
            number, etag = element.findtext("PartNumber", ""), element.findtext("ETag", "")
            if not number.isdigit():
                raise S3Error(400, "MalformedXML", "a Part without a PartNumber")
            wanted.append((int(number), etag))
            given[int(number)] = {child.tag[len("Checksum") :].lower(): (child.text or "").strip() for child in element
                                  if child.tag.startswith("Checksum") and child.tag != "ChecksumType"}  # fmt: skip
        wanted = last_listing_of_each_part(wanted)
        store_key = marker_key(bucket) + key

        def complete():
            upload = self.uploads.get(upload_id, bucket, key)
            done = self.uploads.completed(upload)
            if done is not None:  # a retried Complete: the same answer
                return done
            store = self.app.store()
            with self.uploads.exclusive(upload):  # no part is written into the object being stored
                done = self.uploads.completed(upload)
                if done is not None:  # another Complete of the same upload went first
                    return done
                try:
                    conditions = write_conditions(store, store_key, request.headers)
                    checksum, part_checksums = _object_checksum(upload, self.uploads.parts(upload), wanted, given, request.headers)
                    assembly = self.uploads.assemble(upload, wanted)
                    spans, adopt, etag, sizes = assembly.spans, assembly.adopt, assembly.etag, assembly.sizes
                    prefix = self.uploads.hashed_prefix(upload, assembly)  # hashed while the parts arrived (S3-28)
                    layout = parts_layout(sizes)  # for GetObject ?partNumber
                    meta = {**upload.meta, "s3-etag": etag, **({"s3-parts": layout} if layout else {})}
                    if checksum is not None:
                        meta.update({f"s3-checksum-{checksum[0]}": checksum[1], "s3-checksum-type": checksum[2]})
                        meta.update({"s3-part-checksums": part_checksums} if len(part_checksums) <= 16 * 1024 else {})
                    object_id, _size = store.write_spans(spans, adopt=adopt, prefix=prefix)  # no copy when parts are in place (S3-10)
                    result = store.put_object(store_key, object_id, content_type=upload.content_type, meta=meta, **conditions)
                finally:
                    self.app._flush_warnings(store)
                self.uploads.finish(upload, etag, result.version.version, checksum)  # committed: the parts are no longer needed
            return etag, result.version.version, checksum

        etag, version, checksum = await self.app.call(complete)
        answer = ((f"Checksum{checksum[0].upper()}", checksum[1]), ("ChecksumType", checksum[2])) if checksum else ()
        body = document("CompleteMultipartUploadResult", (("Location", f"/{bucket}/{key}"), ("Bucket", bucket), ("Key", key),
                                                          ("ETag", f'"{etag}"'), *answer))  # fmt: skip
        return xml_response(body, headers={"x-amz-version-id": str(version)})

    async def list_parts(self, bucket: str, key: str, upload_id: str, query: dict) -> web.Response:

        marker = query.get("part-number-marker", "0")
        limit_text = query.get("max-parts", "1000")
        if not marker.isdigit() or not limit_text.isdigit():
            raise S3Error(400, "InvalidArgument", "part-number-marker and max-parts are numbers")
        limit = min(int(limit_text), 1000)
        parts = await self.app.call(lambda: self.uploads.parts(self.uploads.get(upload_id, bucket, key)))
        after = [part for part in parts if part.number > int(marker)]
        shown, truncated = after[:limit], len(after) > limit
        rows = [("Part", (("PartNumber", part.number), ("LastModified", iso_time(part.modified_ns)), ("ETag", f'"{part.etag}"'),
                          ("Size", part.size))) for part in shown]  # fmt: skip
        body = document("ListPartsResult", (
            ("Bucket", bucket), ("Key", key), ("UploadId", upload_id), ("Initiator", OWNER), ("Owner", OWNER),
            ("StorageClass", "STANDARD"), ("PartNumberMarker", int(marker)),
            ("NextPartNumberMarker", shown[-1].number if shown else int(marker)), ("MaxParts", limit),
            ("IsTruncated", truncated), ("", rows)))  # fmt: skip
        return xml_response(body)

    async def list_uploads(self, bucket: str, query: dict) -> web.Response:

        prefix = query.get("prefix", "")
        uploads = [upload for upload in await self.app.call(lambda: self.uploads.list(bucket)) if upload.key.startswith(prefix)]
        limit_text = query.get("max-uploads", "1000")
        limit = min(int(limit_text), 1000) if limit_text.isdigit() else 1000
        key_marker = query.get("key-marker", "")
        uploads = [upload for upload in uploads if upload.key > key_marker]
        shown = uploads[:limit]
        rows = [("Upload", (("Key", upload.key), ("UploadId", upload.upload_id), ("Initiator", OWNER), ("Owner", OWNER),
                            ("StorageClass", "STANDARD"), ("Initiated", iso_time(upload.initiated_ns)))) for upload in shown]  # fmt: skip
        body = document("ListMultipartUploadsResult", (
            ("Bucket", bucket), ("KeyMarker", key_marker), ("UploadIdMarker", query.get("upload-id-marker", "")),
            ("NextKeyMarker", shown[-1].key if shown and len(uploads) > limit else None), ("Prefix", prefix),
            ("MaxUploads", limit), ("IsTruncated", len(uploads) > limit), ("", rows)))  # fmt: skip
        return xml_response(body)
