"""Bucket CORS on the S3 port (S3-25): the configuration as marker versions, the unsigned preflight, and the headers
of a browser's actual requests, against a real `imstore serve --s3-port`."""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import re
from urllib.parse import urlsplit

import pytest

from imstore import Store

pytest.importorskip("boto3", reason="boto3 comes with the test extras")
from botocore.auth import S3SigV4Auth  # noqa: E402
from botocore.awsrequest import AWSRequest  # noqa: E402
from botocore.credentials import Credentials  # noqa: E402
from botocore.exceptions import ClientError  # noqa: E402

from .s3helpers import start_s3, stop_s3  # noqa: E402

pytestmark = pytest.mark.timeout(120)

RULES = [
    {"ID": "gallery", "AllowedOrigins": ["http://*.lan"], "AllowedMethods": ["GET", "PUT"],
     "AllowedHeaders": ["x-amz-*", "content-type"], "ExposeHeaders": ["ETag", "x-amz-version-id"], "MaxAgeSeconds": 600},
    {"AllowedOrigins": ["*"], "AllowedMethods": ["HEAD"]},
]  # fmt: skip


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    server = start_s3(tmp_path_factory.mktemp("s3cors"))
    yield server
    stop_s3(server)


def send(s3, method: str, target: str, headers: dict | None = None, body: bytes = b"", sign: bool = False):
    """One request with http.client: (status, headers with lower-case names, body); signed by botocore if asked."""
    host = f"127.0.0.1:{s3.port}"
    headers = {"Host": host, **(headers or {})}
    if sign:
        request = AWSRequest(method=method, url=f"http://{host}{target}", headers=headers, data=body)
        S3SigV4Auth(Credentials(*s3.write_key), "s3", "us-east-1").add_auth(request)
        headers = dict(request.headers.items())
    connection = http.client.HTTPConnection("127.0.0.1", s3.port, timeout=30)
    try:
        connection.request(method, target, body=body or None, headers=headers)
        reply = connection.getresponse()
        return reply.status, {name.lower(): value for name, value in reply.getheaders()}, reply.read()
    finally:
        connection.close()


def marker_history(s3, bucket: str) -> list:
    with Store.open(s3.server.store) as store:
        return store.history(bucket + "/")


def error_code(body: bytes) -> str:
    return re.search(rb"<Code>([^<]*)</Code>", body).group(1).decode()


def cors_headers(headers: dict) -> dict:
    return {name: value for name, value in headers.items() if name.startswith("access-control-")}


def test_configuration_round_trip_is_versions_of_the_marker(s3):
    client = s3.client()
    client.create_bucket(Bucket="gallery")
    client.put_object(Bucket="gallery", Key="a.jpg", Body=b"jpeg")
    created = client.list_buckets()["Buckets"]
    with pytest.raises(ClientError) as missing:
        client.get_bucket_cors(Bucket="gallery")
    assert missing.value.response["Error"]["Code"] == "NoSuchCORSConfiguration"
    assert missing.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404

    client.put_bucket_cors(Bucket="gallery", CORSConfiguration={"CORSRules": RULES})
    assert client.get_bucket_cors(Bucket="gallery")["CORSRules"] == RULES
    client.delete_bucket_cors(Bucket="gallery")
    with pytest.raises(ClientError) as deleted:
        client.get_bucket_cors(Bucket="gallery")
    assert deleted.value.response["Error"]["Code"] == "NoSuchCORSConfiguration"
    client.delete_bucket_cors(Bucket="gallery")  # again: there is nothing to remove, nothing is written

    history = marker_history(s3, "gallery")
    assert [version.version for version in history] == [1, 2, 3]
    assert "s3-cors" not in history[0].meta and "s3-cors" not in history[2].meta
    assert [rule["origins"] for rule in json.loads(history[1].meta["s3-cors"])] == [["http://*.lan"], ["*"]]
    assert all(version.meta["s3-bucket"] == "created" and version.size == 0 for version in history)

    # The marker's versions stay out of every S3 listing; the bucket and its creation date are as before.
    assert [entry["Key"] for entry in client.list_objects_v2(Bucket="gallery")["Contents"]] == ["a.jpg"]
    assert [entry["Key"] for entry in client.list_objects(Bucket="gallery")["Contents"]] == ["a.jpg"]
    versions = client.list_object_versions(Bucket="gallery")
    assert [entry["Key"] for entry in versions["Versions"]] == ["a.jpg"] and "DeleteMarkers" not in versions
    assert client.head_bucket(Bucket="gallery")["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert client.list_buckets()["Buckets"] == created


def test_preflight_is_answered_unsigned_from_the_latest_configuration(s3):
    client = s3.client()
    client.create_bucket(Bucket="preflight")
    target = "/preflight/photos/a.jpg"
    asked = {"Origin": "http://gallery.lan", "Access-Control-Request-Method": "PUT"}
    status, _, body = send(s3, "OPTIONS", target, asked)
    assert status == 403 and error_code(body) == "AccessForbidden"  # no configuration yet

    client.put_bucket_cors(Bucket="preflight", CORSConfiguration={"CORSRules": RULES})
    status, headers, _ = send(s3, "OPTIONS", target, {**asked, "Access-Control-Request-Headers": "X-Amz-Date, Content-Type"})
    assert status == 200
    assert cors_headers(headers) == {
        "access-control-allow-origin": "http://gallery.lan", "access-control-allow-methods": "GET, PUT",
        "access-control-allow-headers": "x-amz-date, content-type", "access-control-expose-headers": "ETag, x-amz-version-id",
        "access-control-max-age": "600", "access-control-allow-credentials": "true",
    }  # fmt: skip
    assert "Origin" in headers["vary"]
    status, headers, _ = send(s3, "OPTIONS", "/preflight", {"Origin": "https://other.example", "Access-Control-Request-Method": "HEAD"})
    assert status == 200 and headers["access-control-allow-origin"] == "*" and "access-control-allow-credentials" not in headers

    url = client.generate_presigned_url("put_object", Params={"Bucket": "preflight", "Key": "up.jpg"})
    presigned = urlsplit(url).path + "?" + urlsplit(url).query  # a page preflights the presigned URL itself
    assert send(s3, "OPTIONS", presigned, asked)[0] == 200

    refused = [
        {**asked, "Origin": "http://gallery.example"},  # no rule allows the origin
        {**asked, "Access-Control-Request-Method": "DELETE"},  # nor the method
        {**asked, "Access-Control-Request-Headers": "x-custom"},  # nor a header
    ]
    for headers in refused:
        status, answer_headers, body = send(s3, "OPTIONS", target, headers)
        assert (status, error_code(body)) == (403, "AccessForbidden"), headers
        assert not cors_headers(answer_headers)
    for headers in ({"Access-Control-Request-Method": "PUT"}, {"Origin": "http://gallery.lan"}):
        assert send(s3, "OPTIONS", target, headers)[0] == 400, headers
    assert send(s3, "OPTIONS", "/no-such-bucket/a", asked)[0] == 404
    assert send(s3, "OPTIONS", target, asked, b"unsigned bytes")[0] == 400  # nothing unsigned carries a body to a worker
    assert send(s3, "OPTIONS", target, {**asked, "Content-Length": "0"})[0] == 200

    client.delete_bucket_cors(Bucket="preflight")
    assert send(s3, "OPTIONS", target, asked)[0] == 403  # the latest configuration answers


def test_only_options_goes_unsigned(s3):
    s3.client().create_bucket(Bucket="unsigned")
    s3.client().put_bucket_cors(Bucket="unsigned", CORSConfiguration={"CORSRules": RULES})
    for method in ("GET", "PUT", "DELETE"):
        status, headers, body = send(s3, method, "/unsigned/a.jpg", {"Origin": "http://gallery.lan"})
        assert (status, error_code(body)) == (403, "AccessDenied"), method
    status, _, body = send(s3, "PUT", "/unsigned?cors", {"Origin": "http://gallery.lan"}, b"<CORSConfiguration/>")
    assert status == 403 and len(marker_history(s3, "unsigned")) == 2


def test_actual_requests_with_an_origin_carry_the_headers(s3):
    client = s3.client()
    client.create_bucket(Bucket="actual")
    client.put_object(Bucket="actual", Key="a.txt", Body=b"hello")
    url = urlsplit(client.generate_presigned_url("get_object", Params={"Bucket": "actual", "Key": "a.txt"}))
    presigned = url.path + "?" + url.query
    origin = {"Origin": "http://gallery.lan"}
    assert not cors_headers(send(s3, "GET", presigned, origin)[1])  # no configuration: no headers

    client.put_bucket_cors(Bucket="actual", CORSConfiguration={"CORSRules": RULES})
    status, headers, body = send(s3, "GET", presigned, origin)
    assert (status, body) == (200, b"hello")
    assert headers["access-control-allow-origin"] == "http://gallery.lan" and "Origin" in headers["vary"]
    assert headers["access-control-expose-headers"] == "ETag, x-amz-version-id"
    assert not cors_headers(send(s3, "GET", presigned)[1])  # without an Origin
    assert not cors_headers(send(s3, "GET", presigned, {"Origin": "http://evil.example"})[1])

    # A signed GET of the latest version is answered from the gateway's memory once kept; one with an Origin is not.
    for _ in range(2):
        status, headers, _ = send(s3, "GET", "/actual/a.txt", sign=True)
        assert status == 200 and not cors_headers(headers)
    status, headers, body = send(s3, "GET", "/actual/a.txt", origin, sign=True)
    assert (status, body) == (200, b"hello") and headers["access-control-allow-origin"] == "http://gallery.lan"

    status, headers, body = send(s3, "GET", "/actual/missing.txt", origin, sign=True)
    assert (status, error_code(body)) == (404, "NoSuchKey") and headers["access-control-allow-origin"] == "http://gallery.lan"
    status, headers, _ = send(s3, "HEAD", "/actual/a.txt", {"Origin": "https://any.example"}, sign=True)
    assert status == 200 and headers["access-control-allow-origin"] == "*"  # the second rule: any origin, HEAD
    put = urlsplit(client.generate_presigned_url("put_object", Params={"Bucket": "actual", "Key": "b.txt"}))
    status, headers, _ = send(s3, "PUT", put.path + "?" + put.query, origin, b"from a page")
    assert status == 200 and headers["access-control-allow-origin"] == "http://gallery.lan"
    assert client.get_object(Bucket="actual", Key="b.txt")["Body"].read() == b"from a page"


def test_a_read_key_cannot_change_the_configuration(s3):
    s3.client().create_bucket(Bucket="readonly")
    reader = s3.client("read")
    for change in (lambda: reader.put_bucket_cors(Bucket="readonly", CORSConfiguration={"CORSRules": RULES}),
                   lambda: reader.delete_bucket_cors(Bucket="readonly")):  # fmt: skip
        with pytest.raises(ClientError) as refused:
            change()
        assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert len(marker_history(s3, "readonly")) == 1
    s3.client().put_bucket_cors(Bucket="readonly", CORSConfiguration={"CORSRules": RULES})
    assert reader.get_bucket_cors(Bucket="readonly")["CORSRules"] == RULES  # reading it takes the read scope


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"<CORSConfiguration><CORSRule>", "MalformedXML"),
        (b"<CORSConfiguration></CORSConfiguration>", "MalformedXML"),
        (b"<CORSConfiguration><CORSRule><AllowedMethod>GET</AllowedMethod></CORSRule></CORSConfiguration>", "MalformedXML"),
        (b"<CORSConfiguration><CORSRule><AllowedOrigin>*</AllowedOrigin><AllowedMethod>PATCH</AllowedMethod></CORSRule>"
         b"</CORSConfiguration>", "InvalidRequest"),
        (b"<CORSConfiguration><CORSRule><AllowedOrigin>http://*.*.lan</AllowedOrigin><AllowedMethod>GET</AllowedMethod>"
         b"</CORSRule></CORSConfiguration>", "InvalidRequest"),
        (b"<CORSConfiguration><CORSRule><AllowedOrigin>*</AllowedOrigin><AllowedMethod>GET</AllowedMethod>"
         b"<AllowedHeader>x-*-*</AllowedHeader></CORSRule></CORSConfiguration>", "InvalidRequest"),
        (b"<CORSConfiguration><CORSRule><AllowedOrigin>*</AllowedOrigin><AllowedMethod>GET</AllowedMethod>"
         b"<MaxAgeSeconds>soon</MaxAgeSeconds></CORSRule></CORSConfiguration>", "MalformedXML"),
    ],
)  # fmt: skip
def test_a_bad_configuration_is_400_and_writes_nothing(s3, body, code):
    bucket = "bad-" + str(abs(hash(body)) % 10**8)
    s3.client().create_bucket(Bucket=bucket)
    status, _, answer = send(s3, "PUT", f"/{bucket}?cors", {"Content-Type": "application/xml"}, body, sign=True)
    assert (status, error_code(answer)) == (400, code)
    assert len(marker_history(s3, bucket)) == 1


def test_a_whole_body_with_a_wrong_content_md5_is_bad_digest_and_writes_nothing(s3):
    """PutBucketCors and DeleteObjects read their bodies whole and check a sent Content-MD5 (digests.check_whole_body)."""
    s3.client().create_bucket(Bucket="digest")
    s3.client().put_object(Bucket="digest", Key="kept", Body=b"x")
    config = (b"<CORSConfiguration><CORSRule><AllowedOrigin>*</AllowedOrigin><AllowedMethod>GET</AllowedMethod>"
              b"</CORSRule></CORSConfiguration>")  # fmt: skip
    listing = b"<Delete><Object><Key>kept</Key></Object></Delete>"
    for target, body in (("/digest?cors", config), ("/digest?delete", listing)):
        method = "PUT" if target.endswith("cors") else "POST"
        wrong = base64.b64encode(hashlib.md5(body + b"!").digest()).decode()
        status, _, answer = send(s3, method, target, {"Content-MD5": wrong}, body, sign=True)
        assert (status, error_code(answer)) == (400, "BadDigest")
    assert len(marker_history(s3, "digest")) == 1
    assert s3.client().get_object(Bucket="digest", Key="kept")["Body"].read() == b"x"
    right = base64.b64encode(hashlib.md5(config).digest()).decode()
    assert send(s3, "PUT", "/digest?cors", {"Content-MD5": right}, config, sign=True)[0] == 200
    assert len(marker_history(s3, "digest")) == 2


def test_errors_the_front_gives_carry_the_headers_too(s3):
    """A bad signature or a read key's write is refused before any worker: a page must still be able to read why."""
    client = s3.client()
    client.create_bucket(Bucket="refused")
    client.put_object(Bucket="refused", Key="a.txt", Body=b"hello")
    signer = s3.client(signature_version="s3v4")
    url = urlsplit(signer.generate_presigned_url("get_object", Params={"Bucket": "refused", "Key": "a.txt"}))
    signature = re.search(r"X-Amz-Signature=([0-9a-f]+)", url.query).group(1)
    tampered = url.path + "?" + url.query.replace(signature, signature[::-1])
    origin = {"Origin": "http://gallery.lan"}
    status, headers, body = send(s3, "GET", tampered, origin)
    assert (status, error_code(body)) == (403, "SignatureDoesNotMatch") and not cors_headers(headers)  # no rules yet

    client.put_bucket_cors(Bucket="refused", CORSConfiguration={"CORSRules": RULES})
    status, headers, body = send(s3, "GET", tampered, origin)
    assert (status, error_code(body)) == (403, "SignatureDoesNotMatch")
    assert headers["access-control-allow-origin"] == "http://gallery.lan" and "Origin" in headers["vary"]
    assert not cors_headers(send(s3, "GET", tampered, {"Origin": "http://evil.example"})[1])  # no rule allows it
    assert not cors_headers(send(s3, "GET", tampered)[1])  # not a browser's
    reader = urlsplit(s3.client("read").generate_presigned_url("put_object", Params={"Bucket": "refused", "Key": "b.txt"}))
    status, headers, body = send(s3, "PUT", reader.path + "?" + reader.query, origin, b"from a page")
    assert (status, error_code(body)) == (403, "AccessDenied") and headers["access-control-allow-origin"] == "http://gallery.lan"
    assert s3.client().list_objects_v2(Bucket="refused")["KeyCount"] == 1  # and nothing was written
