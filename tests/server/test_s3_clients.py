"""S3 over the wire the way real clients send it: https with aws-chunked trailers (boto3), signed chunks
without Content-Encoding (restic's minio-go), presigned URLs, skewed clocks, bad signatures, aws-cli."""

from __future__ import annotations

import base64
import datetime
import hashlib
import http.client
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from unittest import mock

import pytest

from imstore import Store
from imstore.server.s3.sigv4 import ChunkContext, chunk_signature

pytest.importorskip("boto3", reason="boto3 comes with the test extras")
from botocore.auth import S3SigV4Auth  # noqa: E402
from botocore.awsrequest import AWSRequest  # noqa: E402
from botocore.credentials import Credentials  # noqa: E402
from botocore.exceptions import ClientError  # noqa: E402

from .s3helpers import start_s3, stop_s3  # noqa: E402
from .test_http import self_signed_certificate  # noqa: E402


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    server = start_s3(tmp_path_factory.mktemp("s3clients"))
    server.client().create_bucket(Bucket="wire")
    yield server
    stop_s3(server)


def signed_request(s3, method: str, target: str, headers: dict, payload: str, when: datetime.datetime | None = None,
                   secret: str | None = None) -> tuple[dict, str]:  # fmt: skip
    """Headers for a request signed by botocore's SigV4 signer (at `when`), and its seed signature."""
    host = f"127.0.0.1:{s3.port}"
    request = AWSRequest(method=method, url=f"http://{host}{target}", headers={"Host": host, **headers, "X-Amz-Content-SHA256": payload})
    signer = _DeclaredPayload(Credentials(s3.write_key[0], secret or s3.write_key[1]), "s3", "us-east-1")
    signer.declared = payload
    now = (when or datetime.datetime.now(datetime.UTC)).replace(tzinfo=None)
    with mock.patch("botocore.auth.get_current_datetime", return_value=now):
        signer.add_auth(request)
    signed = dict(request.headers.items())
    return signed, signed["Authorization"].rpartition("Signature=")[2]


class _DeclaredPayload(S3SigV4Auth):
    """botocore's S3 signer, signing the x-amz-content-sha256 we declare (it would hash the empty body)."""

    declared = ""

    def payload(self, request) -> str:
        return self.declared


def send(s3, method: str, target: str, headers: dict, body: bytes = b"") -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", s3.port, timeout=30)
    try:
        connection.request(method, target, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def signed_chunks(context: ChunkContext, data: bytes, size: int, tamper: int | None = None) -> bytes:
    """A STREAMING-AWS4-HMAC-SHA256-PAYLOAD body (tamper: index of a chunk whose data is changed after signing)."""
    out, previous = [], context.seed_signature
    pieces = [data[i : i + size] for i in range(0, len(data), size)] + [b""]
    for number, piece in enumerate(pieces):
        signature = chunk_signature(context, previous, hashlib.sha256(piece).hexdigest())
        previous = signature
        sent = piece if number != tamper else bytes([piece[0] ^ 1]) + piece[1:]
        out.append(f"{len(piece):x};chunk-signature={signature}\r\n".encode() + sent + b"\r\n")
    return b"".join(out)


def chunked_put(s3, key: str, data: bytes, tamper: int | None = None, content_md5: bytes | None = None) -> tuple[int, bytes]:
    from imstore.server.s3.sigv4 import Signatures

    md5 = base64.b64encode(content_md5 or hashlib.md5(data).digest()).decode()
    headers = {"Content-MD5": md5, "x-amz-decoded-content-length": str(len(data))}
    signed, seed = signed_request(s3, "PUT", f"/wire/{key}", headers, "STREAMING-AWS4-HMAC-SHA256-PAYLOAD")
    amz_date = signed["X-Amz-Date"]
    scope = f"{amz_date[:8]}/us-east-1/s3/aws4_request"
    key_bytes = Signatures(lambda _: None).signing_key(s3.write_key[1], amz_date[:8], "us-east-1", "s3")
    body = signed_chunks(ChunkContext(key_bytes, seed, amz_date, scope), data, 64 * 1024, tamper)
    return send(s3, "PUT", f"/wire/{key}", signed, body)


def test_restic_style_signed_chunks_without_content_encoding_are_stored(s3):
    data = os.urandom(200 * 1024 + 17)
    status, body = chunked_put(s3, "restic/data/blob", data)
    assert status == 200, body
    with Store.open(s3.server.store) as store:
        assert store.get("wire/restic/data/blob") == data
        assert store.history("wire/restic/data/blob")[-1].meta["s3-etag"] == hashlib.md5(data).hexdigest()


def test_a_tampered_chunk_or_wrong_content_md5_writes_nothing(s3):
    data = os.urandom(150 * 1024)
    status, body = chunked_put(s3, "tampered", data, tamper=1)
    assert status == 403 and b"SignatureDoesNotMatch" in body
    status, body = chunked_put(s3, "bad-md5", data, content_md5=hashlib.md5(b"other").digest())
    assert status == 400 and b"BadDigest" in body
    with Store.open(s3.server.store) as store:
        assert store.ls("wire/tampered") == [] and store.ls("wire/bad-md5") == []


def test_a_payload_that_is_not_the_signed_sha256_writes_nothing(s3):
    signed, _ = signed_request(s3, "PUT", "/wire/sha-mismatch", {}, hashlib.sha256(b"promised").hexdigest())
    status, body = send(s3, "PUT", "/wire/sha-mismatch", signed, b"delivered")
    assert status == 400 and b"XAmzContentSHA256Mismatch" in body
    with Store.open(s3.server.store) as store:
        assert store.ls("wire/sha-mismatch") == []


def test_skewed_clocks_and_bad_signatures_are_refused_and_write_nothing(s3):
    payload = hashlib.sha256(b"data").hexdigest()
    late = datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=1)
    signed, _ = signed_request(s3, "PUT", "/wire/skewed", {}, payload, when=late)
    status, body = send(s3, "PUT", "/wire/skewed", signed, b"data")
    assert status == 403 and b"RequestTimeTooSkewed" in body
    signed, _ = signed_request(s3, "PUT", "/wire/forged", {}, payload, secret="not-the-secret")
    status, body = send(s3, "PUT", "/wire/forged", signed, b"data")
    assert status == 403 and b"SignatureDoesNotMatch" in body
    status, body = send(s3, "PUT", "/wire/anonymous", {}, b"data")
    assert status == 403 and b"AccessDenied" in body
    with Store.open(s3.server.store) as store:
        assert not any(name in v.key for v in store.ls("wire/") for name in ("skewed", "forged", "anonymous"))


def test_presigned_urls_v2_by_default_and_v4(s3):
    for key in ("shared.txt", "shared dir/été+1.txt"):
        s3.client().put_object(Bucket="wire", Key=key, Body=b"shared")
        v2 = s3.client().generate_presigned_url("get_object", Params={"Bucket": "wire", "Key": key}, ExpiresIn=60)
        v4 = s3.client(signature_version="s3v4").generate_presigned_url("get_object", Params={"Bucket": "wire", "Key": key},
                                                                         ExpiresIn=60)  # fmt: skip
        assert "AWSAccessKeyId=" in v2 and "X-Amz-Signature=" in v4
        for url in (v2, v4):
            with urllib.request.urlopen(url, timeout=30) as reply:
                assert reply.read() == b"shared"
    with pytest.raises(urllib.error.HTTPError) as forged:
        urllib.request.urlopen(v4.replace("1.txt", "2.txt"), timeout=30)
    assert forged.value.code == 403
    for key, expected in (("write", 200), ("read", 403)):  # a presigned PUT carries its key's scope
        url = s3.client(key, signature_version="s3v4").generate_presigned_url(
            "put_object", Params={"Bucket": "wire", "Key": f"uploaded-by-{key}"}, ExpiresIn=60)
        request = urllib.request.Request(url, data=b"via a link", method="PUT")
        try:
            with urllib.request.urlopen(request, timeout=30) as reply:
                status = reply.status
        except urllib.error.HTTPError as refused:
            status = refused.code
        assert status == expected
    with Store.open(s3.server.store) as store:
        assert store.get("wire/uploaded-by-write") == b"via a link" and store.ls("wire/uploaded-by-read") == []


def test_boto3_over_https_sends_aws_chunked_with_a_crc32_trailer(tmp_path):
    cert, key = self_signed_certificate(tmp_path, "-addext", "subjectAltName=IP:127.0.0.1")
    s3 = start_s3(tmp_path, tls=(cert, key))
    try:
        client = s3.client()
        client.create_bucket(Bucket="tls")
        data = os.urandom(300 * 1024)
        put = client.put_object(Bucket="tls", Key="over/https", Body=data)
        assert put["ETag"] == f'"{hashlib.md5(data).hexdigest()}"'
        assert client.get_object(Bucket="tls", Key="over/https")["Body"].read() == data
        with Store.open(s3.server.store) as store:
            assert store.get("tls/over/https") == data  # the trailer is not stored as content (seaweedfs#6517)
    finally:
        stop_s3(s3)


def aws_cli(s3, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """aws s3 ARGS against the server (trusting its certificate over https)."""
    aws = shutil.which("aws", path=str(Path(sys.executable).parent)) or shutil.which("aws")
    if aws is None:
        pytest.skip("aws-cli is not installed (awscli comes with the test extras)")
    env = {**os.environ, "AWS_ACCESS_KEY_ID": s3.write_key[0], "AWS_SECRET_ACCESS_KEY": s3.write_key[1],
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_CONFIG_FILE": str(cwd / "none"),
           "AWS_SHARED_CREDENTIALS_FILE": str(cwd / "none")}  # fmt: skip
    trust = ["--ca-bundle", str(s3.verify)] if s3.scheme == "https" else []
    return subprocess.run([aws, "--endpoint-url", s3.endpoint, *trust, "s3", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)  # fmt: skip


def test_aws_cli_cp_ls_rm(s3, tmp_path):
    check_aws_cli_cp_ls_rm(s3, tmp_path)


def test_aws_cli_over_https_with_a_self_signed_certificate(tmp_path):
    cert, key = self_signed_certificate(tmp_path, "-addext", "subjectAltName=IP:127.0.0.1")
    s3 = start_s3(tmp_path, tls=(cert, key))
    try:
        s3.client().create_bucket(Bucket="wire")
        check_aws_cli_cp_ls_rm(s3, tmp_path)
    finally:
        stop_s3(s3)


def check_aws_cli_cp_ls_rm(s3, tmp_path):
    source = tmp_path / "report.txt"
    source.write_bytes(b"quarterly numbers\n" * 1000)
    copied = aws_cli(s3, "cp", str(source), "s3://wire/reports/report.txt", cwd=tmp_path)
    assert copied.returncode == 0, copied.stderr
    listed = aws_cli(s3, "ls", "s3://wire/reports/", cwd=tmp_path)
    assert listed.returncode == 0 and "report.txt" in listed.stdout, listed.stderr
    back = tmp_path / "back.txt"
    assert aws_cli(s3, "cp", "s3://wire/reports/report.txt", str(back), cwd=tmp_path).returncode == 0
    assert back.read_bytes() == source.read_bytes()
    removed = aws_cli(s3, "rm", "s3://wire/reports/report.txt", cwd=tmp_path)
    assert removed.returncode == 0, removed.stderr
    assert "report.txt" not in aws_cli(s3, "ls", "s3://wire/reports/", cwd=tmp_path).stdout
    with Store.open(s3.server.store) as store:
        history = store.history("wire/reports/report.txt")
        assert [v.op for v in history] == ["put", "delete"]
        assert store.get("wire/reports/report.txt", 1) == source.read_bytes()


def test_boto3_errors_are_client_errors_not_crashes(s3):
    with pytest.raises(ClientError) as denied:
        s3.client("read").put_object(Bucket="wire", Key="read-scope", Body=b"x")
    assert denied.value.response["Error"]["Code"] == "AccessDenied"


def test_the_internal_s3_header_cannot_be_sent_by_a_client_of_the_v1_port(s3):
    """X-Imstore-S3 carries a verified caller from the S3 port to a worker; from a client it is dropped."""
    forged = '{"name":"x","scope":"write","payload":"UNSIGNED-PAYLOAD"}'
    connection = http.client.HTTPConnection("127.0.0.1", s3.server.port, timeout=30)
    try:
        connection.request("GET", "/v1/keys/wire%2Fshared.txt", headers={"X-Imstore-S3": forged})  # no token
        response = connection.getresponse()
        assert response.status == 401 and "xml" not in response.getheader("Content-Type", "")
        response.read()
        connection.request("GET", "/v1/log", headers={"X-Imstore-S3": forged, "Authorization": f"Bearer {s3.server.read_token}"})
        response = connection.getresponse()
        assert response.status == 200 and response.getheader("Content-Type") == "application/json"
    finally:
        connection.close()
