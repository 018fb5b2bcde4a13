"""S3 on `serve --s3-port` end to end with boto3: buckets, objects, versions, delete markers, refusals."""

from __future__ import annotations

import base64
import hashlib

import pytest

from imstore import Store

pytest.importorskip("boto3", reason="boto3 comes with the test extras")
from botocore.exceptions import ClientError  # noqa: E402

from .s3helpers import start_s3, stop_s3  # noqa: E402


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    server = start_s3(tmp_path_factory.mktemp("s3"))
    yield server
    stop_s3(server)


def error_code(info: pytest.ExceptionInfo) -> str:
    return info.value.response["Error"]["Code"]


def test_a_bucket_is_the_first_segment_of_a_key(s3):
    client = s3.client()
    client.create_bucket(Bucket="photos")
    client.put_object(Bucket="photos", Key="2024/a.jpg", Body=b"jpeg bytes")
    with Store.open(s3.server.store) as store:
        assert store.get("photos/2024/a.jpg") == b"jpeg bytes"
        store.put("photos/from-cli.txt", b"cli")
    assert client.get_object(Bucket="photos", Key="from-cli.txt")["Body"].read() == b"cli"
    assert "photos" in [bucket["Name"] for bucket in client.list_buckets()["Buckets"]]
    client.head_bucket(Bucket="photos")


def test_create_bucket_is_durable_and_a_second_create_writes_nothing(s3):
    client = s3.client()
    client.create_bucket(Bucket="empty-bucket")
    with Store.open(s3.server.store) as store:
        assert [v.key for v in store.ls("empty-bucket")] == ["empty-bucket/"]
    client.create_bucket(Bucket="empty-bucket")  # 200, as S3 answers in us-east-1
    with Store.open(s3.server.store) as store:
        assert [v.version for v in store.history("empty-bucket/")] == [1]
    assert client.list_objects_v2(Bucket="empty-bucket")["KeyCount"] == 0


def test_missing_bucket_and_key_have_their_s3_codes(s3):
    client = s3.client()
    with pytest.raises(ClientError) as no_bucket:
        client.get_object(Bucket="no-such-bucket", Key="k")
    assert error_code(no_bucket) == "NoSuchBucket"
    client.create_bucket(Bucket="codes")
    with pytest.raises(ClientError) as no_key:
        client.get_object(Bucket="codes", Key="missing")
    assert error_code(no_key) == "NoSuchKey"
    with pytest.raises(ClientError) as no_head:  # HEAD: the status alone, no body
        client.head_object(Bucket="codes", Key="missing")
    assert no_head.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    with pytest.raises(ClientError) as no_bucket_head:
        client.head_bucket(Bucket="no-such-bucket")
    assert no_bucket_head.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    for bad in ("Bad_Name", "foo-.bar", "foo..bar", "192.168.1.1"):
        with pytest.raises(ClientError) as bad_name:
            client.create_bucket(Bucket=bad)
        assert error_code(bad_name) in ("InvalidBucketName", "400")


def test_put_get_head_range_and_md5_etag(s3):
    client = s3.client()
    client.create_bucket(Bucket="objects")
    data = bytes(range(256)) * 40
    put = client.put_object(Bucket="objects", Key="dir/blob", Body=data, ContentType="application/x-test", Metadata={"colour": "blue"})
    assert put["ETag"] == f'"{hashlib.md5(data).hexdigest()}"'
    got = client.get_object(Bucket="objects", Key="dir/blob")
    assert got["Body"].read() == data
    assert got["ContentType"] == "application/x-test"
    assert got["Metadata"] == {"colour": "blue"}
    assert got["VersionId"] == put["VersionId"] == "1"
    head = client.head_object(Bucket="objects", Key="dir/blob")
    assert head["ContentLength"] == len(data) and head["ETag"] == put["ETag"]
    ranged = client.get_object(Bucket="objects", Key="dir/blob", Range="bytes=10-19")
    assert ranged["Body"].read() == data[10:20] and ranged["ContentRange"] == f"bytes 10-19/{len(data)}"
    with pytest.raises(ClientError) as outside:
        client.get_object(Bucket="objects", Key="dir/blob", Range=f"bytes={len(data) + 5}-")
    assert error_code(outside) == "InvalidRange"


def test_large_put_streams_and_reads_back(s3):
    client = s3.client()
    client.create_bucket(Bucket="large")
    data = hashlib.sha256(b"seed").digest() * (3 * 1024 * 1024 // 32)
    client.put_object(Bucket="large", Key="big", Body=data)
    assert client.get_object(Bucket="large", Key="big")["Body"].read() == data


def test_delete_adds_a_marker_and_every_version_stays_readable(s3):
    client = s3.client()
    client.create_bucket(Bucket="history")
    client.put_object(Bucket="history", Key="doc", Body=b"one")
    client.put_object(Bucket="history", Key="doc", Body=b"two")
    deleted = client.delete_object(Bucket="history", Key="doc")
    assert deleted["DeleteMarker"] is True and deleted["VersionId"] == "3"
    with pytest.raises(ClientError) as gone:
        client.get_object(Bucket="history", Key="doc")
    assert error_code(gone) == "NoSuchKey"
    assert client.get_object(Bucket="history", Key="doc", VersionId="1")["Body"].read() == b"one"
    versions = client.list_object_versions(Bucket="history")
    assert [(v["VersionId"], v["IsLatest"]) for v in versions["Versions"]] == [("2", False), ("1", False)]
    assert [(m["VersionId"], m["IsLatest"]) for m in versions["DeleteMarkers"]] == [("3", True)]
    with pytest.raises(ClientError) as refused:
        client.delete_object(Bucket="history", Key="doc", VersionId="1")
    assert error_code(refused) == "AccessDenied"
    with Store.open(s3.server.store) as store:
        assert [v.op for v in store.history("history/doc")] == ["put", "put", "delete"]


def test_versioning_is_always_enabled_and_object_lock_compliance(s3):
    client = s3.client()
    client.create_bucket(Bucket="locked")
    assert client.get_bucket_versioning(Bucket="locked")["Status"] == "Enabled"
    with pytest.raises(ClientError) as suspended:
        client.put_bucket_versioning(Bucket="locked", VersioningConfiguration={"Status": "Suspended"})
    assert error_code(suspended) == "InvalidBucketState"
    client.put_bucket_versioning(Bucket="locked", VersioningConfiguration={"Status": "Enabled"})
    lock = client.get_object_lock_configuration(Bucket="locked")["ObjectLockConfiguration"]
    assert lock["ObjectLockEnabled"] == "Enabled" and lock["Rule"]["DefaultRetention"]["Mode"] == "COMPLIANCE"
    with pytest.raises(ClientError) as refused:
        client.delete_bucket(Bucket="locked")
    assert error_code(refused) == "AccessDenied"


def test_listings_v1_v2_with_prefix_delimiter_and_pages(s3):
    client = s3.client()
    client.create_bucket(Bucket="listing")
    names = ["a/1", "a/2", "b/1", "c", "d/e/f"]
    for name in names:
        client.put_object(Bucket="listing", Key=name, Body=name.encode())
    v2 = client.list_objects_v2(Bucket="listing")
    assert [entry["Key"] for entry in v2["Contents"]] == names
    folded = client.list_objects_v2(Bucket="listing", Delimiter="/")
    assert [entry["Key"] for entry in folded["Contents"]] == ["c"]
    assert [p["Prefix"] for p in folded["CommonPrefixes"]] == ["a/", "b/", "d/"]
    seen, token = [], None
    for _ in range(10):
        page = client.list_objects_v2(Bucket="listing", MaxKeys=2, **({"ContinuationToken": token} if token else {}))
        seen += [entry["Key"] for entry in page["Contents"]]
        if not page["IsTruncated"]:
            break
        token = page["NextContinuationToken"]
    assert seen == names
    v1 = client.list_objects(Bucket="listing", Prefix="a/", MaxKeys=1)
    assert [entry["Key"] for entry in v1["Contents"]] == ["a/1"] and v1["IsTruncated"]
    v1_rest = client.list_objects(Bucket="listing", Prefix="a/", Marker="a/1")
    assert [entry["Key"] for entry in v1_rest["Contents"]] == ["a/2"] and not v1_rest["IsTruncated"]
    pages, marker = [], ""
    for _ in range(10):  # v1 pages by NextMarker, which may be a common prefix
        page = client.list_objects(Bucket="listing", Delimiter="/", MaxKeys=1, Marker=marker)
        pages.append([e["Key"] for e in page.get("Contents", [])] + [p["Prefix"] for p in page.get("CommonPrefixes", [])])
        if not page["IsTruncated"]:
            break
        marker = page["NextMarker"]
    assert pages == [["a/"], ["b/"], ["c"], ["d/"]]


def test_list_object_versions_pages_by_key_and_version_marker(s3):
    client = s3.client()
    client.create_bucket(Bucket="vpages")
    for body in (b"1", b"2", b"3"):
        client.put_object(Bucket="vpages", Key="k", Body=body)
    client.put_object(Bucket="vpages", Key="l", Body=b"x")
    seen, markers = [], {}
    for _ in range(10):
        page = client.list_object_versions(Bucket="vpages", MaxKeys=2, **markers)
        seen += [(v["Key"], v["VersionId"]) for v in page.get("Versions", [])]
        if not page["IsTruncated"]:
            break
        markers = {"KeyMarker": page["NextKeyMarker"], "VersionIdMarker": page["NextVersionIdMarker"]}
    assert seen == [("k", "3"), ("k", "2"), ("k", "1"), ("l", "1")]


def test_conditional_puts(s3):
    client = s3.client()
    client.create_bucket(Bucket="conditional")
    first = client.put_object(Bucket="conditional", Key="k", Body=b"one", IfNoneMatch="*")
    with pytest.raises(ClientError) as exists:
        client.put_object(Bucket="conditional", Key="k", Body=b"two", IfNoneMatch="*")
    assert exists.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    with pytest.raises(ClientError) as stale:
        client.put_object(Bucket="conditional", Key="k", Body=b"two", IfMatch='"0123456789abcdef0123456789abcdef"')
    assert stale.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    second = client.put_object(Bucket="conditional", Key="k", Body=b"two", IfMatch=first["ETag"])
    assert second["VersionId"] == "2"
    with Store.open(s3.server.store) as store:
        assert [v.version for v in store.history("conditional/k")] == [1, 2]


def test_wrong_content_md5_and_checksum_write_nothing(s3):
    client = s3.client()
    client.create_bucket(Bucket="digests")
    wrong_md5 = base64.b64encode(hashlib.md5(b"other").digest()).decode()
    with pytest.raises(ClientError) as bad_md5:
        client.put_object(Bucket="digests", Key="k", Body=b"data", ContentMD5=wrong_md5)
    assert error_code(bad_md5) == "BadDigest"
    wrong_sha = base64.b64encode(hashlib.sha256(b"other").digest()).decode()
    with pytest.raises(ClientError) as bad_checksum:
        client.put_object(Bucket="digests", Key="k", Body=b"data", ChecksumSHA256=wrong_sha)
    assert error_code(bad_checksum) == "BadDigest"
    with Store.open(s3.server.store) as store:
        assert store.ls("digests/k") == []
    good = base64.b64encode(hashlib.md5(b"data").digest()).decode()
    client.put_object(Bucket="digests", Key="k", Body=b"data", ContentMD5=good, ChecksumAlgorithm="CRC32")
    assert client.get_object(Bucket="digests", Key="k")["Body"].read() == b"data"


def test_read_scope_key_cannot_write(s3):
    s3.client().create_bucket(Bucket="readonly")
    reader = s3.client("read")
    with pytest.raises(ClientError) as refused:
        reader.put_object(Bucket="readonly", Key="k", Body=b"data")
    assert error_code(refused) == "AccessDenied"
    with pytest.raises(ClientError) as refused_delete:
        reader.delete_object(Bucket="readonly", Key="k")
    assert error_code(refused_delete) == "AccessDenied"
    assert reader.list_objects_v2(Bucket="readonly")["KeyCount"] == 0


def test_unknown_operations_are_501_with_an_s3_error(s3):
    client = s3.client()
    client.create_bucket(Bucket="unknown")
    with pytest.raises(ClientError) as unknown:
        client.get_bucket_policy(Bucket="unknown")
    assert error_code(unknown) == "NotImplemented"
    assert unknown.value.response["ResponseMetadata"]["HTTPStatusCode"] == 501


def test_token_create_s3_prints_a_key_pair_once_and_revoke_stops_it(s3, tmp_path):
    import json
    import subprocess
    import sys
    import time

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "imstore", "--store", str(s3.server.store), *args],
                              capture_output=True, text=True, timeout=60)  # fmt: skip

    created = cli("token", "create", "--s3", "--scope", "write", "--name", "cli-s3", "--json")
    assert created.returncode == 0, created.stderr
    document = json.loads(created.stdout)
    assert set(document) == {"name", "scope", "access_key_id", "secret_access_key"}
    assert document["access_key_id"].startswith("IMST") and len(document["access_key_id"]) == 20
    listed = cli("token", "list", "--json")
    assert ("cli-s3", "write", document["access_key_id"]) in [(t["name"], t["scope"], t.get("access_key_id"))
                                                              for t in json.loads(listed.stdout)]  # fmt: skip
    assert document["secret_access_key"] not in listed.stdout
    s3.write_key, saved = (document["access_key_id"], document["secret_access_key"]), s3.write_key
    try:
        s3.client().create_bucket(Bucket="cli-made-key")
        assert cli("token", "revoke", "cli-s3").returncode == 0
        code, deadline = None, time.monotonic() + 10  # refused within a second, like any revoked token
        while code is None and time.monotonic() < deadline:
            try:
                s3.client().list_objects_v2(Bucket="cli-made-key")
                time.sleep(0.1)
            except ClientError as exc:
                code = exc.response["Error"]["Code"]
        assert code == "InvalidAccessKeyId"
    finally:
        s3.write_key = saved
    credentials = tmp_path / "credentials"
    assert cli("token", "create", "--s3", "--scope", "read", "--name", "file-s3", "--output", str(credentials)).returncode == 0
    assert credentials.stat().st_mode & 0o777 == 0o600 and "aws_secret_access_key = " in credentials.read_text()


def test_delete_objects_adds_markers_and_refuses_each_version_id(s3):
    client = s3.client()
    client.create_bucket(Bucket="batch")
    for name in ("a", "b"):
        client.put_object(Bucket="batch", Key=name, Body=name.encode())
    answer = client.delete_objects(Bucket="batch", Delete={"Objects": [{"Key": "a"}, {"Key": "b", "VersionId": "1"}, {"Key": "none"}]})
    assert [(d["Key"], d.get("DeleteMarker")) for d in answer["Deleted"]] == [("a", True), ("none", None)]
    assert [(e["Key"], e["Code"]) for e in answer["Errors"]] == [("b", "AccessDenied")]
    with Store.open(s3.server.store) as store:
        assert [v.op for v in store.history("batch/a")] == ["put", "delete"]
        assert [v.op for v in store.history("batch/b")] == ["put"]


def test_copy_object_names_the_same_bytes_and_keeps_or_replaces_metadata(s3):
    client = s3.client()
    client.create_bucket(Bucket="copies")
    put = client.put_object(Bucket="copies", Key="src", Body=b"original", Metadata={"k": "v"}, ContentType="text/plain")
    client.put_object(Bucket="copies", Key="src", Body=b"newer")
    copied = client.copy_object(Bucket="copies", Key="dst", CopySource={"Bucket": "copies", "Key": "src", "VersionId": "1"})
    assert copied["CopyObjectResult"]["ETag"] == put["ETag"] and copied["CopySourceVersionId"] == "1"
    got = client.get_object(Bucket="copies", Key="dst")
    assert got["Body"].read() == b"original" and got["Metadata"] == {"k": "v"} and got["ContentType"] == "text/plain"
    client.copy_object(Bucket="copies", Key="dst", CopySource="copies/src", MetadataDirective="REPLACE", Metadata={"n": "2"})
    assert client.head_object(Bucket="copies", Key="dst")["Metadata"] == {"n": "2"}
    with pytest.raises(ClientError) as onto_itself:
        client.copy_object(Bucket="copies", Key="src", CopySource="copies/src")
    assert error_code(onto_itself) == "InvalidRequest"
    with pytest.raises(ClientError) as stale:
        client.copy_object(Bucket="copies", Key="x", CopySource="copies/src", CopySourceIfMatch=put["ETag"])
    assert error_code(stale) == "PreconditionFailed"
    with Store.open(s3.server.store) as store:
        assert store.resolve("copies/dst", 1).hash == store.resolve("copies/src", 1).hash


def test_upload_part_copy_takes_a_range_of_a_stored_version(s3):
    client = s3.client()
    client.create_bucket(Bucket="partcopy")
    data = bytes(range(256)) * 100
    client.put_object(Bucket="partcopy", Key="source", Body=data)
    upload_id = client.create_multipart_upload(Bucket="partcopy", Key="assembled")["UploadId"]
    part = client.upload_part_copy(Bucket="partcopy", Key="assembled", UploadId=upload_id, PartNumber=1,
                                   CopySource="partcopy/source", CopySourceRange="bytes=100-1099")  # fmt: skip
    client.complete_multipart_upload(Bucket="partcopy", Key="assembled", UploadId=upload_id,
                                     MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["CopyPartResult"]["ETag"]}]})  # fmt: skip
    assert client.get_object(Bucket="partcopy", Key="assembled")["Body"].read() == data[100:1100]


def test_retention_and_legal_hold_say_compliance_forever_and_cannot_be_weakened(s3):
    import datetime

    client = s3.client()
    client.create_bucket(Bucket="retained")
    client.put_object(Bucket="retained", Key="k", Body=b"x")
    retention = client.get_object_retention(Bucket="retained", Key="k")["Retention"]
    assert retention["Mode"] == "COMPLIANCE" and retention["RetainUntilDate"].year == 9999
    assert client.get_object_legal_hold(Bucket="retained", Key="k")["LegalHold"]["Status"] == "ON"
    later = datetime.datetime(2100, 1, 1, tzinfo=datetime.UTC)
    client.put_object_retention(Bucket="retained", Key="k", Retention={"Mode": "COMPLIANCE", "RetainUntilDate": later})
    with pytest.raises(ClientError) as weaker:
        client.put_object_retention(Bucket="retained", Key="k", Retention={"Mode": "GOVERNANCE", "RetainUntilDate": later})
    assert error_code(weaker) == "AccessDenied"
    with pytest.raises(ClientError) as lifted:
        client.put_object_legal_hold(Bucket="retained", Key="k", LegalHold={"Status": "OFF"})
    assert error_code(lifted) == "AccessDenied"
    with pytest.raises(ClientError) as missing:
        client.get_object_retention(Bucket="retained", Key="k", VersionId="9")
    assert error_code(missing) == "NoSuchVersion"


def test_standard_headers_are_kept_and_response_overrides_apply(s3):
    client = s3.client()
    client.create_bucket(Bucket="headers")
    client.put_object(Bucket="headers", Key="k", Body=b"x", CacheControl="max-age=60", ContentDisposition="attachment",
                      ContentLanguage="en")  # fmt: skip
    head = client.head_object(Bucket="headers", Key="k")
    assert (head["CacheControl"], head["ContentDisposition"], head["ContentLanguage"]) == ("max-age=60", "attachment", "en")
    got = client.get_object(Bucket="headers", Key="k", ResponseContentType="text/csv", ResponseCacheControl="no-store")
    assert (got["ContentType"], got["CacheControl"]) == ("text/csv", "no-store")


def test_if_none_match_with_an_etag_and_list_buckets_pages(s3):
    client = s3.client()
    client.create_bucket(Bucket="etag-cond")
    first = client.put_object(Bucket="etag-cond", Key="k", Body=b"one")
    with pytest.raises(ClientError) as same:
        client.put_object(Bucket="etag-cond", Key="k", Body=b"two", IfNoneMatch=first["ETag"])
    assert same.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    assert client.put_object(Bucket="etag-cond", Key="k", Body=b"two", IfNoneMatch='"00000000000000000000000000000000"')["VersionId"] == "2"
    names, token = [], None
    for _ in range(100):
        page = client.list_buckets(MaxBuckets=2, **({"ContinuationToken": token} if token else {}))
        names += [bucket["Name"] for bucket in page["Buckets"]]
        token = page.get("ContinuationToken")
        if not token:
            break
    assert names == sorted(names) and "etag-cond" in names and len(names) == len(set(names))
    assert names == [bucket["Name"] for bucket in client.list_buckets()["Buckets"]]


def test_checksums_are_kept_and_every_version_says_it_is_locked(s3):
    client = s3.client()
    client.create_bucket(Bucket="checksums")
    body = b"checked bytes"
    sha = base64.b64encode(hashlib.sha256(body).digest()).decode()
    put = client.put_object(Bucket="checksums", Key="k", Body=body, ChecksumAlgorithm="SHA256", ChecksumSHA256=sha)
    assert put["ChecksumSHA256"] == sha
    assert "ChecksumSHA256" not in client.head_object(Bucket="checksums", Key="k")
    head = client.head_object(Bucket="checksums", Key="k", ChecksumMode="ENABLED")
    assert head["ChecksumSHA256"] == sha
    assert head["ObjectLockMode"] == "COMPLIANCE" and head["ObjectLockLegalHoldStatus"] == "ON"
    listed = client.list_objects_v2(Bucket="checksums", FetchOwner=True)["Contents"][0]
    assert listed["Owner"]["ID"] == "imstore" and "Owner" not in client.list_objects_v2(Bucket="checksums")["Contents"][0]


def test_conditional_deletes_match_the_latest_version_atomically(s3):
    client = s3.client()
    client.create_bucket(Bucket="cond-delete")
    etag = client.put_object(Bucket="cond-delete", Key="k", Body=b"one")["ETag"]
    with pytest.raises(ClientError) as stale:
        client.delete_object(Bucket="cond-delete", Key="k", IfMatch='"00000000000000000000000000000000"')
    assert stale.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    assert client.delete_object(Bucket="cond-delete", Key="k", IfMatch=etag)["DeleteMarker"] is True
    with pytest.raises(ClientError) as on_marker:  # the current version is now the marker, which has no ETag
        client.delete_object(Bucket="cond-delete", Key="k", IfMatch=etag)
    assert on_marker.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    second = client.put_object(Bucket="cond-delete", Key="k", Body=b"two")["ETag"]
    answer = client.delete_objects(Bucket="cond-delete", Delete={"Objects": [{"Key": "k", "ETag": etag}]})
    assert [e["Code"] for e in answer["Errors"]] == ["PreconditionFailed"]
    answer = client.delete_objects(Bucket="cond-delete", Delete={"Objects": [{"Key": "k", "ETag": second}]})
    assert answer["Deleted"][0]["DeleteMarker"] is True
    with Store.open(s3.server.store) as store:
        assert [v.op for v in store.history("cond-delete/k")] == ["put", "delete", "put", "delete"]



def test_server_side_encryption_is_refused_rather_than_ignored(s3):
    client = s3.client()
    client.create_bucket(Bucket="no-sse")
    for extra in ({"ServerSideEncryption": "AES256"},
                  {"SSECustomerAlgorithm": "AES256", "SSECustomerKey": "k" * 32}):  # fmt: skip
        with pytest.raises(ClientError) as refused:
            client.put_object(Bucket="no-sse", Key="secret", Body=b"plaintext", **extra)
        assert error_code(refused) == "NotImplemented"
    with Store.open(s3.server.store) as store:
        assert store.ls("no-sse/secret") == []
