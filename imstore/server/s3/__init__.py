"""S3 on its own port (`serve --s3-port`): path-style S3 over the store, a bucket being a key's first segment.

The gateway side (front.py) checks the signature and the scope and forwards the request to a
worker with the caller's verified context in an internal header; the worker side (handlers.py)
answers it through the Store API. sigv4.py, chunked.py, digests.py and xml.py are pure helpers.
"""

__all__ = ["OPERATIONS"]

# The S3 operations the port answers (shared S3.md); anything else is 501 NotImplemented. openapi.json lists them too.
OPERATIONS = (
    "ListBuckets", "CreateBucket", "HeadBucket", "GetBucketLocation", "GetBucketVersioning", "PutBucketVersioning",
    "GetObjectLockConfiguration", "ListObjects", "ListObjectsV2", "ListObjectVersions", "PutObject", "GetObject",
    "HeadObject", "DeleteObject", "DeleteObjects", "CopyObject", "CreateMultipartUpload", "UploadPart", "UploadPartCopy",
    "CompleteMultipartUpload", "AbortMultipartUpload", "ListParts", "ListMultipartUploads", "GetObjectRetention",
    "PutObjectRetention", "GetObjectLegalHold", "PutObjectLegalHold", "GetObjectAttributes", "GetBucketAcl", "PutBucketAcl",
    "GetObjectAcl", "PutObjectAcl", "GetBucketCors", "PutBucketCors", "DeleteBucketCors",
)  # fmt: skip
