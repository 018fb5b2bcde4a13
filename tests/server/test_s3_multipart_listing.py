"""Multipart details s3-tests checks on `serve --s3-port`: a part sent twice and listed twice in Complete, and
UploadPartCopy from a numbered version of a source that has several."""

from __future__ import annotations

import os

import pytest

from imstore import Store

pytest.importorskip("boto3", reason="boto3 comes with the test extras")
from botocore.exceptions import ClientError  # noqa: E402

from .s3helpers import start_s3, stop_s3  # noqa: E402

MiB = 1 << 20


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    server = start_s3(tmp_path_factory.mktemp("s3mplisting"))
    server.client().create_bucket(Bucket="parts")
    yield server
    stop_s3(server)


def complete_code(client, key: str, upload_id: str, parts: list[tuple[int, str]]) -> str:
    with pytest.raises(ClientError) as refused:
        client.complete_multipart_upload(Bucket="parts", Key=key, UploadId=upload_id,
                                         MultipartUpload={"Parts": [{"PartNumber": n, "ETag": e} for n, e in parts]})  # fmt: skip
    return refused.value.response["Error"]["Code"]


def test_a_part_listed_twice_in_a_row_is_its_last_upload_and_a_real_misorder_is_still_refused(s3):
    client = s3.client()
    upload_id = client.create_multipart_upload(Bucket="parts", Key="resent")["UploadId"]
    first = client.upload_part(Bucket="parts", Key="resent", UploadId=upload_id, PartNumber=1, Body=b"B" * 8)["ETag"]
    last = client.upload_part(Bucket="parts", Key="resent", UploadId=upload_id, PartNumber=1, Body=b"A" * 8)["ETag"]
    two = client.upload_part(Bucket="parts", Key="resent", UploadId=upload_id, PartNumber=2, Body=b"2" * 8)["ETag"]
    assert complete_code(client, "resent", upload_id, [(1, last), (1, first)]) == "InvalidPart"  # the first was replaced
    assert complete_code(client, "resent", upload_id, [(1, last), (2, two), (1, last)]) == "InvalidPartOrder"
    assert complete_code(client, "resent", upload_id, [(2, two), (1, last)]) == "InvalidPartOrder"
    done = client.complete_multipart_upload(Bucket="parts", Key="resent", UploadId=upload_id,
                                            MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": first},
                                                                       {"PartNumber": 1, "ETag": last}]})  # fmt: skip
    assert done["ETag"].endswith('-1"')
    assert client.get_object(Bucket="parts", Key="resent")["Body"].read() == b"A" * 8
    with Store.open(s3.server.store) as store:
        assert [version.size for version in store.history("parts/resent")] == [8]


def test_upload_part_copy_takes_the_numbered_version_it_names(s3):
    client = s3.client()
    size = 6 * MiB
    bodies = [os.urandom(size) for _ in range(3)]
    for body in bodies:
        client.put_object(Bucket="parts", Key="source", Body=body)
    for version_id, body in zip(("1", "2", "3"), bodies, strict=True):
        upload_id = client.create_multipart_upload(Bucket="parts", Key="copied")["UploadId"]
        parts = []
        for number, (start, end) in enumerate(((0, 5 * MiB - 1), (5 * MiB, size - 1)), 1):
            answer = client.upload_part_copy(Bucket="parts", Key="copied", UploadId=upload_id, PartNumber=number,
                                             CopySource={"Bucket": "parts", "Key": "source", "VersionId": version_id},
                                             CopySourceRange=f"bytes={start}-{end}")  # fmt: skip
            assert answer["CopySourceVersionId"] == version_id
            parts.append({"PartNumber": number, "ETag": answer["CopyPartResult"]["ETag"]})
        client.complete_multipart_upload(Bucket="parts", Key="copied", UploadId=upload_id, MultipartUpload={"Parts": parts})
        assert client.get_object(Bucket="parts", Key="copied")["Body"].read() == body
    upload_id = client.create_multipart_upload(Bucket="parts", Key="copied")["UploadId"]
    with pytest.raises(ClientError) as missing:
        client.upload_part_copy(Bucket="parts", Key="copied", UploadId=upload_id, PartNumber=1,
                                CopySource={"Bucket": "parts", "Key": "source", "VersionId": "9"})  # fmt: skip
    assert missing.value.response["Error"]["Code"] == "NoSuchVersion"
