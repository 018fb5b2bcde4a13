"""The S3 port answers repeat signed GETs of a latest version from the gateway's memory, as a worker would."""

from __future__ import annotations

import hashlib
import http.client
import os
import re

import pytest

from imstore import Store

pytest.importorskip("boto3", reason="boto3 comes with the test extras")
from botocore.auth import S3SigV4Auth  # noqa: E402
from botocore.awsrequest import AWSRequest  # noqa: E402
from botocore.credentials import Credentials  # noqa: E402

from .s3helpers import start_s3, stop_s3  # noqa: E402

pytestmark = pytest.mark.timeout(120)

PER_ANSWER = {"date", "x-imstore-worker"}  # differ between any two answers


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    server = start_s3(tmp_path_factory.mktemp("s3memory"))
    server.client().create_bucket(Bucket="mem")
    yield server
    stop_s3(server)


def signed_get(s3, target: str, headers: dict | None = None, key: str = "write", secret: str | None = None):
    """A GET signed by botocore, sent with http.client: (status, headers with lower-case names, body)."""
    access_key_id, real_secret = s3.write_key if key == "write" else s3.read_key
    host = f"127.0.0.1:{s3.port}"
    request = AWSRequest(method="GET", url=f"http://{host}{target}", headers={"Host": host, **(headers or {})})
    S3SigV4Auth(Credentials(access_key_id, secret or real_secret), "s3", "us-east-1").add_auth(request)
    connection = http.client.HTTPConnection("127.0.0.1", s3.port, timeout=30)
    try:
        connection.request("GET", target, headers=dict(request.headers.items()))
        reply = connection.getresponse()
        return reply.status, {name.lower(): value for name, value in reply.getheaders()}, reply.read()
    finally:
        connection.close()


def s3_hits(s3) -> int:
    text = s3.server.request("GET", "/metrics", token="read").body.decode()
    return int(re.search(r"^imstore_gateway_s3_memory_hits_total (\d+)$", text, re.M).group(1))


def without_per_answer(headers: dict) -> dict:
    return {name: value for name, value in headers.items() if name not in PER_ANSWER}


def test_the_memory_answer_is_the_workers_answer(s3):
    client = s3.client()
    data = os.urandom(5000)
    client.put_object(Bucket="mem", Key="dir/s3-upload", Body=data, ContentType="application/x-test", Metadata={"colour": "blue"},
                      CacheControl="max-age=60", ChecksumAlgorithm="CRC32")  # fmt: skip
    with Store.open(s3.server.store) as store:
        store.put("mem/dir/from-cli", b"written by the CLI", content_type="text/plain")
    for key, etag in (("dir/s3-upload", hashlib.md5(data).hexdigest()), ("dir/from-cli", None)):
        target = f"/mem/{key}"
        worker = signed_get(s3, target)
        hits = s3_hits(s3)
        memory = signed_get(s3, target, key="read")  # another key, the same answer
        assert s3_hits(s3) == hits + 1
        assert "x-imstore-worker" in worker[1] and "x-imstore-worker" not in memory[1]
        assert memory[0] == worker[0] == 200 and memory[2] == worker[2]
        assert without_per_answer(memory[1]) == without_per_answer(worker[1])
        if etag is not None:
            assert memory[1]["etag"] == f'"{etag}"' and memory[2] == data
            assert memory[1]["x-amz-meta-colour"] == "blue" and memory[1]["content-type"] == "application/x-test"
        for name in ("last-modified", "x-amz-version-id", "x-amz-object-lock-mode", "content-length", "server"):
            assert name in memory[1], name


def test_a_version_written_by_another_process_is_seen_by_the_next_get(s3):
    s3.client().put_object(Bucket="mem", Key="moving", Body=b"one")
    for _ in range(2):
        status, headers, body = signed_get(s3, "/mem/moving")
        assert (status, body, headers["x-amz-version-id"]) == (200, b"one", "1")
    with Store.open(s3.server.store) as other:  # this test process is the other writer
        other.put("mem/moving", b"two")
    status, headers, body = signed_get(s3, "/mem/moving")
    assert (status, body, headers["x-amz-version-id"]) == (200, b"two", "2")
    s3.client().delete_object(Bucket="mem", Key="moving")
    status, headers, _ = signed_get(s3, "/mem/moving")
    assert status == 404 and headers["x-amz-delete-marker"] == "true"


@pytest.mark.parametrize(
    ("target", "headers", "status"),
    [
        ("/mem/asked", {"Range": "bytes=0-1"}, 206),
        ("/mem/asked", {"x-amz-checksum-mode": "ENABLED"}, 200),
        ("/mem/asked", {"If-None-Match": "ETAG"}, 304),
        ("/mem/asked?versionId=1", {}, 200),
        ("/mem/asked?response-content-type=text%2Fhtml", {}, 200),
    ],
)
def test_ranges_conditions_checksums_and_queries_go_to_a_worker(s3, target, headers, status):
    s3.client().put_object(Bucket="mem", Key="asked", Body=b"asked for", ChecksumAlgorithm="SHA256")
    _, kept, _ = signed_get(s3, "/mem/asked")
    _, kept, _ = signed_get(s3, "/mem/asked")  # in memory now
    headers = {name: value.replace("ETAG", kept["etag"]) for name, value in headers.items()}
    hits = s3_hits(s3)
    reply = signed_get(s3, target, headers)
    assert reply[0] == status and "x-imstore-worker" in reply[1]
    assert s3_hits(s3) == hits
    if "x-amz-checksum-mode" in headers:
        assert "x-amz-checksum-sha256" in reply[1] and "x-amz-checksum-sha256" not in kept


def test_a_bad_signature_is_refused_even_for_a_kept_answer(s3):
    s3.client().put_object(Bucket="mem", Key="guarded", Body=b"secret-ish")
    for _ in range(2):
        assert signed_get(s3, "/mem/guarded")[0] == 200
    hits = s3_hits(s3)
    status, _, body = signed_get(s3, "/mem/guarded", secret="not-the-secret")
    assert status == 403 and b"SignatureDoesNotMatch" in body
    assert s3_hits(s3) == hits


def test_a_multipart_etag_cannot_be_checked_so_its_answer_is_not_kept(s3):
    client = s3.client()
    upload_id = client.create_multipart_upload(Bucket="mem", Key="parts")["UploadId"]
    part = client.upload_part(Bucket="mem", Key="parts", UploadId=upload_id, PartNumber=1, Body=b"one small last part")
    client.complete_multipart_upload(Bucket="mem", Key="parts", UploadId=upload_id,
                                     MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]})  # fmt: skip
    hits = s3_hits(s3)
    for _ in range(2):
        status, headers, body = signed_get(s3, "/mem/parts")
        assert (status, body) == (200, b"one small last part") and headers["etag"].endswith('-1"')
    assert s3_hits(s3) == hits


def test_may_answer_is_the_same_for_every_spelling_of_a_header_name():
    from multidict import CIMultiDict

    from imstore.server.s3.memory import ANSWER_NEUTRAL, S3Memory

    names = [*ANSWER_NEUTRAL, "Range", "x-amz-checksum-mode", "If-None-Match", "X-Amz-Meta-A"]
    for name in names:
        spellings = {name, name.upper(), name.title(), name.lower(), name.swapcase().title()}
        for spelling in spellings:
            headers = CIMultiDict([("Host", "h"), ("X-Amz-Date", "d"), (spelling, "0")])
            assert S3Memory.may_answer("GET", "/b/k", headers) == (name.lower() in ANSWER_NEUTRAL), spelling
    assert not S3Memory.may_answer("GET", "/b/k", CIMultiDict([("content-length", "3")]))
