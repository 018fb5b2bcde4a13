"""S3 multipart uploads on `serve --s3-port`: parts on disk shared by the workers, one version on completion."""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import time

import pytest

from imstore import Store
from imstore.errors import KeyNotFound

pytest.importorskip("boto3", reason="boto3 comes with the test extras")
from boto3.s3.transfer import TransferConfig  # noqa: E402
from botocore.exceptions import ClientError  # noqa: E402

from .s3helpers import start_s3, stop_s3  # noqa: E402

MiB = 1 << 20


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    server = start_s3(tmp_path_factory.mktemp("s3multipart"))
    server.client().create_bucket(Bucket="parts")
    yield server
    stop_s3(server)


def multipart_etag(data: bytes, part_size: int) -> str:
    digests = [hashlib.md5(data[i : i + part_size]).digest() for i in range(0, len(data), part_size)]
    return f'"{hashlib.md5(b"".join(digests)).hexdigest()}-{len(digests)}"'


def test_a_multipart_upload_from_parallel_parts_is_one_version_with_the_md5_of_md5s_etag(s3, tmp_path):
    data = os.urandom(13 * MiB + 123)
    source = tmp_path / "big.bin"
    source.write_bytes(data)
    client = s3.client()
    config = TransferConfig(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB, max_concurrency=4)
    client.upload_file(str(source), "parts", "backups/big.bin", Config=config)
    head = client.head_object(Bucket="parts", Key="backups/big.bin")
    assert head["ETag"] == multipart_etag(data, 5 * MiB)
    assert client.get_object(Bucket="parts", Key="backups/big.bin")["Body"].read() == data
    with Store.open(s3.server.store) as store:
        assert [v.version for v in store.history("parts/backups/big.bin")] == [1]
        assert store.get("parts/backups/big.bin") == data
    assert not list((s3.server.store / "s3-uploads").glob("*/*.part"))  # the parts are gone once committed


def test_every_request_of_one_upload_goes_to_one_worker(s3):
    """The gateway routes by uploadId (S3-27): the parts' MD5s meet in one worker's lanes. The access log names the
    worker of each request; round robin would alternate the two workers part by part."""
    client = s3.client()
    workers = {}
    for key in ("affinity/a", "affinity/b", "affinity/c"):
        upload = client.create_multipart_upload(Bucket="parts", Key=key)["UploadId"]
        parts = [client.upload_part(Bucket="parts", Key=key, UploadId=upload, PartNumber=number, Body=b"x" * 100)
                 for number in (1, 2, 3, 4)]  # fmt: skip
        assert [part["PartNumber"] for part in client.list_parts(Bucket="parts", Key=key, UploadId=upload)["Parts"]] == [1, 2, 3, 4]
        client.abort_multipart_upload(Bucket="parts", Key=key, UploadId=upload)
        assert len(parts) == 4
        lines = [line for line in s3.server.log().splitlines() if f" /parts/{key} " in line]
        assert len(lines) == 7  # CreateMultipartUpload (no id yet: any worker), four parts, ListParts, Abort
        workers[key] = {line.rpartition("worker=")[2] for line in lines[1:]}
    assert all(len(used) == 1 for used in workers.values()), workers


def test_parts_whose_bodies_are_still_arriving_leave_the_workers_store_threads_free(tmp_path):
    """Parts are written by threads of their own (S3-27): ten parts stalled mid-body on the one worker (more than
    its eight store threads) all reach it, and a listing, which needs a store thread, is answered meanwhile."""
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    server = start_s3(tmp_path, "--workers", "1", env={"IMSTORE_BODY_TIMEOUT": "300"})  # stalled parts wait, not fail
    connections = []
    try:
        client = server.client()
        client.create_bucket(Bucket="slow")
        client.put_object(Bucket="slow", Key="small", Body=b"read me")
        upload = client.create_multipart_upload(Bucket="slow", Key="big")["UploadId"]
        for number in range(1, 11):
            target = f"/slow/big?partNumber={number}&uploadId={upload}"
            request = AWSRequest(method="PUT", url=server.endpoint + target,
                                 headers={"Content-Length": str(6 * MiB), "X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD"})  # fmt: skip
            S3SigV4Auth(Credentials(*server.write_key), "s3", "us-east-1").add_auth(request)
            head = f"PUT {target} HTTP/1.1\r\n" + "".join(f"{name}: {value}\r\n" for name, value in request.headers.items())
            connection = socket.create_connection(("127.0.0.1", server.port), timeout=30)
            connection.sendall(f"{head}Host: 127.0.0.1:{server.port}\r\n\r\n".encode() + b"x" * (MiB // 2))  # then nothing more
            connections.append(connection)
        claims = server.server.store / "s3-uploads" / upload
        deadline = time.monotonic() + 20
        while len(list(claims.glob("*.claim"))) < 10 and time.monotonic() < deadline:  # each part's thread has begun
            time.sleep(0.05)
        assert len(list(claims.glob("*.claim"))) == 10
        listed = server.client(read_timeout=15).list_objects_v2(Bucket="slow")
        assert [entry["Key"] for entry in listed["Contents"]] == ["small"]
    finally:
        for connection in connections:
            connection.close()
        stop_s3(server)


def test_an_aborted_upload_leaves_no_version_and_no_parts(s3):
    client = s3.client()
    upload = client.create_multipart_upload(Bucket="parts", Key="aborted")
    part = client.upload_part(Bucket="parts", Key="aborted", UploadId=upload["UploadId"], PartNumber=1, Body=b"x" * 1000)
    assert part["ETag"] == f'"{hashlib.md5(b"x" * 1000).hexdigest()}"'
    listed = client.list_parts(Bucket="parts", Key="aborted", UploadId=upload["UploadId"])
    assert [(p["PartNumber"], p["Size"]) for p in listed["Parts"]] == [(1, 1000)]
    assert [u["UploadId"] for u in client.list_multipart_uploads(Bucket="parts")["Uploads"]] == [upload["UploadId"]]
    client.abort_multipart_upload(Bucket="parts", Key="aborted", UploadId=upload["UploadId"])
    with pytest.raises(ClientError) as gone:
        client.list_parts(Bucket="parts", Key="aborted", UploadId=upload["UploadId"])
    assert gone.value.response["Error"]["Code"] == "NoSuchUpload"
    with Store.open(s3.server.store) as store:
        assert store.ls("parts/aborted") == []
    assert not (s3.server.store / "s3-uploads" / upload["UploadId"]).exists()


def test_complete_checks_part_order_etags_and_sizes(s3):
    client = s3.client()
    upload_id = client.create_multipart_upload(Bucket="parts", Key="checked")["UploadId"]
    etags = [client.upload_part(Bucket="parts", Key="checked", UploadId=upload_id, PartNumber=n, Body=bytes([n]) * 100)["ETag"]
             for n in (1, 2)]  # fmt: skip

    def complete(parts):
        with pytest.raises(ClientError) as refused:
            client.complete_multipart_upload(Bucket="parts", Key="checked", UploadId=upload_id, MultipartUpload={"Parts": parts})
        return refused.value.response["Error"]["Code"]

    assert complete([{"PartNumber": 2, "ETag": etags[1]}, {"PartNumber": 1, "ETag": etags[0]}]) == "InvalidPartOrder"
    assert complete([{"PartNumber": 1, "ETag": etags[1]}]) == "InvalidPart"
    assert complete([{"PartNumber": 1, "ETag": etags[0]}, {"PartNumber": 2, "ETag": etags[1]}]) == "EntityTooSmall"
    done = client.complete_multipart_upload(Bucket="parts", Key="checked", UploadId=upload_id,
                                            MultipartUpload={"Parts": [{"PartNumber": 2, "ETag": etags[1]}]})  # fmt: skip
    assert done["ETag"].endswith('-1"') and done["VersionId"] == "1"
    again = client.complete_multipart_upload(Bucket="parts", Key="checked", UploadId=upload_id,
                                             MultipartUpload={"Parts": [{"PartNumber": 2, "ETag": etags[1]}]})  # fmt: skip
    assert (again["ETag"], again["VersionId"]) == (done["ETag"], "1")  # a retried Complete gets the same answer
    assert client.get_object(Bucket="parts", Key="checked")["Body"].read() == bytes([2]) * 100


def test_a_read_scope_key_cannot_start_an_upload(s3):
    with pytest.raises(ClientError) as refused:
        s3.client("read").create_multipart_upload(Bucket="parts", Key="denied")
    assert refused.value.response["Error"]["Code"] == "AccessDenied"
    assert not any(
        (entry / "upload.json").read_text().find('"denied"') >= 0 for entry in (s3.server.store / "s3-uploads").glob("*")
    )


def test_get_object_by_part_number(s3):
    client = s3.client()
    sizes = [5 * MiB, 5 * MiB, 1000]
    data = os.urandom(sum(sizes))
    upload_id = client.create_multipart_upload(Bucket="parts", Key="by-part")["UploadId"]
    parts, offset = [], 0
    for number, size in enumerate(sizes, 1):
        etag = client.upload_part(Bucket="parts", Key="by-part", UploadId=upload_id, PartNumber=number,
                                  Body=data[offset : offset + size])["ETag"]  # fmt: skip
        parts.append({"PartNumber": number, "ETag": etag})
        offset += size
    done = client.complete_multipart_upload(Bucket="parts", Key="by-part", UploadId=upload_id, MultipartUpload={"Parts": parts})
    offset = 0
    for number, size in enumerate(sizes, 1):
        got = client.get_object(Bucket="parts", Key="by-part", PartNumber=number)
        assert got["PartsCount"] == 3 and got["ETag"] == done["ETag"] and got["ContentLength"] == size
        assert got["Body"].read() == data[offset : offset + size]
        offset += size
    with pytest.raises(ClientError) as beyond:
        client.get_object(Bucket="parts", Key="by-part", PartNumber=4)
    assert beyond.value.response["Error"]["Code"] == "InvalidPart"
    client.put_object(Bucket="parts", Key="single", Body=b"body")
    assert client.get_object(Bucket="parts", Key="single", PartNumber=1)["Body"].read() == b"body"
    with pytest.raises(ClientError) as no_part:
        client.get_object(Bucket="parts", Key="single", PartNumber=2)
    assert no_part.value.response["Error"]["Code"] == "InvalidPart"


def test_get_object_attributes_answers_from_the_version_record(s3):
    client = s3.client()
    data = os.urandom(11 * MiB)
    upload = client.create_multipart_upload(Bucket="parts", Key="attrs/multi.bin")
    parts = []
    for number, start in enumerate(range(0, len(data), 5 * MiB), 1):
        reply = client.upload_part(Bucket="parts", Key="attrs/multi.bin", UploadId=upload["UploadId"], PartNumber=number,
                                   Body=data[start : start + 5 * MiB])  # fmt: skip
        parts.append({"PartNumber": number, "ETag": reply["ETag"]})
    done = client.complete_multipart_upload(Bucket="parts", Key="attrs/multi.bin", UploadId=upload["UploadId"],
                                            MultipartUpload={"Parts": parts})  # fmt: skip
    everything = ["ETag", "Checksum", "ObjectParts", "StorageClass", "ObjectSize"]
    answer = client.get_object_attributes(Bucket="parts", Key="attrs/multi.bin", ObjectAttributes=everything)
    assert answer["ETag"] == done["ETag"].strip('"') and answer["ObjectSize"] == len(data) and answer["StorageClass"] == "STANDARD"
    assert answer["ObjectParts"]["TotalPartsCount"] == 3 and not answer["ObjectParts"]["IsTruncated"]
    assert [(part["PartNumber"], part["Size"]) for part in answer["ObjectParts"]["Parts"]] == [(1, 5 * MiB), (2, 5 * MiB), (3, MiB)]
    page = client.get_object_attributes(Bucket="parts", Key="attrs/multi.bin", ObjectAttributes=["ObjectParts"], MaxParts=1,
                                        PartNumberMarker=1)["ObjectParts"]  # fmt: skip
    assert [part["PartNumber"] for part in page["Parts"]] == [2] and page["IsTruncated"] and page["NextPartNumberMarker"] == 2

    client.put_object(Bucket="parts", Key="attrs/one.txt", Body=b"foo", ChecksumAlgorithm="SHA256")
    single = client.get_object_attributes(Bucket="parts", Key="attrs/one.txt", ObjectAttributes=everything)
    assert single["ObjectSize"] == 3 and "ObjectParts" not in single
    assert single["Checksum"]["ChecksumSHA256"] == base64.b64encode(hashlib.sha256(b"foo").digest()).decode()
    assert single["VersionId"] == "1"
    with pytest.raises(ClientError) as missing:
        client.get_object_attributes(Bucket="parts", Key="attrs/none", ObjectAttributes=["ETag"])
    assert missing.value.response["Error"]["Code"] == "NoSuchKey"


@pytest.mark.parametrize(("algorithm", "kind"), [("SHA256", "COMPOSITE"), ("CRC32", "FULL_OBJECT"), ("CRC64NVME", "FULL_OBJECT")])
def test_a_multipart_checksum_is_made_of_the_parts_checksums_and_checked(s3, algorithm, kind):
    from imstore.server.s3.digests import _hasher

    client, key = s3.client(), f"sums/{algorithm}"

    def checksum(data: bytes) -> str:
        hasher = _hasher(algorithm.lower())
        hasher.update(data)
        return base64.b64encode(hasher.digest()).decode()

    contents = [os.urandom(5 * MiB), os.urandom(5 * MiB), b"the end"]
    upload = client.create_multipart_upload(Bucket="parts", Key=key, ChecksumAlgorithm=algorithm, ChecksumType=kind)
    assert upload["ChecksumAlgorithm"] == algorithm
    parts = []
    for number, data in enumerate(contents, 1):
        reply = client.upload_part(Bucket="parts", Key=key, UploadId=upload["UploadId"], PartNumber=number, Body=data,
                                   ChecksumAlgorithm=algorithm)  # fmt: skip
        parts.append({"PartNumber": number, "ETag": reply["ETag"], f"Checksum{algorithm}": reply[f"Checksum{algorithm}"]})
    assert [part[f"Checksum{algorithm}"] for part in parts] == [checksum(data) for data in contents]
    wrong = "AAAAAAAAAAA=" if algorithm == "CRC64NVME" else "AAAAAA==" if algorithm == "CRC32" else checksum(b"wrong")
    with pytest.raises(ClientError) as refused:  # a part listed with another checksum than it was uploaded with
        client.complete_multipart_upload(Bucket="parts", Key=key, UploadId=upload["UploadId"],
                                         MultipartUpload={"Parts": [{**parts[0], f"Checksum{algorithm}": wrong}, *parts[1:]]})  # fmt: skip
    assert refused.value.response["Error"]["Code"] == "BadDigest"
    with pytest.raises(ClientError) as refused:  # a claimed whole checksum that does not match: nothing written
        client.complete_multipart_upload(Bucket="parts", Key=key, UploadId=upload["UploadId"], MultipartUpload={"Parts": parts},
                                         **{f"Checksum{algorithm}": wrong})  # fmt: skip
    assert refused.value.response["Error"]["Code"] == "BadDigest"
    with Store.open(s3.server.store) as store, pytest.raises(KeyNotFound):
        store.resolve(f"parts/{key}")
    listed = [{name: value for name, value in part.items() if not name.startswith("Checksum")} for part in parts]
    done = client.complete_multipart_upload(Bucket="parts", Key=key, UploadId=upload["UploadId"],
                                            MultipartUpload={"Parts": listed})  # parts listed without theirs: the ones kept  # fmt: skip
    if kind == "FULL_OBJECT":  # the CRC of the whole object, combined from the parts' without reading them
        expected = checksum(b"".join(contents))
    else:
        hasher = _hasher(algorithm.lower())
        hasher.update(b"".join(base64.b64decode(checksum(data)) for data in contents))
        expected = f"{base64.b64encode(hasher.digest()).decode()}-3"
    assert done[f"Checksum{algorithm}"] == expected and done["ChecksumType"] == kind
    head = client.head_object(Bucket="parts", Key=key, ChecksumMode="ENABLED")
    assert head[f"Checksum{algorithm}"] == expected and head["ChecksumType"] == kind
    second = client.get_object(Bucket="parts", Key=key, PartNumber=2, ChecksumMode="ENABLED")
    assert second[f"Checksum{algorithm}"] == checksum(contents[1]) and second["Body"].read() == contents[1]
    attributes = client.get_object_attributes(Bucket="parts", Key=key, ObjectAttributes=["Checksum", "ObjectParts"])
    assert attributes["Checksum"][f"Checksum{algorithm}"] == expected
    assert [part[f"Checksum{algorithm}"] for part in attributes["ObjectParts"]["Parts"]] == [checksum(data) for data in contents]


@pytest.mark.parametrize("wrong", ["ContentMD5", "ChecksumCRC32", "ChecksumSHA256"])
def test_a_part_whose_md5_or_checksum_is_wrong_is_refused_and_leaves_no_part(s3, wrong):
    """A part of the stride's size is written in place as it arrives: a wrong digest must still leave no part
    (ListParts, Complete), and the part sent again with the right one gives the right object."""
    client, key = s3.client(), f"bad-part/{wrong}"
    first, last = os.urandom(5 * MiB), b"the end"
    claims = {"ContentMD5": base64.b64encode(hashlib.md5(b"other").digest()).decode(), "ChecksumCRC32": "AAAAAA==",
              "ChecksumSHA256": base64.b64encode(hashlib.sha256(b"other").digest()).decode()}  # fmt: skip
    upload = client.create_multipart_upload(Bucket="parts", Key=key)["UploadId"]
    with pytest.raises(ClientError) as refused:
        client.upload_part(Bucket="parts", Key=key, UploadId=upload, PartNumber=1, Body=first, **{wrong: claims[wrong]})
    assert refused.value.response["Error"]["Code"] == "BadDigest"
    assert client.list_parts(Bucket="parts", Key=key, UploadId=upload).get("Parts", []) == []
    ends = client.upload_part(Bucket="parts", Key=key, UploadId=upload, PartNumber=2, Body=last)["ETag"]
    with pytest.raises(ClientError) as missing:  # the refused part cannot be completed
        client.complete_multipart_upload(Bucket="parts", Key=key, UploadId=upload, MultipartUpload={"Parts": [
            {"PartNumber": 1, "ETag": f'"{hashlib.md5(first).hexdigest()}"'}, {"PartNumber": 2, "ETag": ends}]})  # fmt: skip
    assert missing.value.response["Error"]["Code"] == "InvalidPart"
    with Store.open(s3.server.store) as store, pytest.raises(KeyNotFound):
        store.resolve(f"parts/{key}")
    again = client.upload_part(Bucket="parts", Key=key, UploadId=upload, PartNumber=1, Body=first)["ETag"]
    parts = [{"PartNumber": 1, "ETag": again}, {"PartNumber": 2, "ETag": ends}]
    client.complete_multipart_upload(Bucket="parts", Key=key, UploadId=upload, MultipartUpload={"Parts": parts})
    assert client.get_object(Bucket="parts", Key=key)["Body"].read() == first + last
