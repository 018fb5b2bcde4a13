"""SigV4, SigV2 and aws-chunked bodies checked against botocore's own signer and AWS's published example."""

from __future__ import annotations

import base64
import datetime
import hashlib
import os
import zlib
from unittest import mock

import pytest
from multidict import CIMultiDict

from imstore.server.s3.chunked import AwsChunkedBody
from imstore.server.s3.digests import Digests
from imstore.server.s3.sigv4 import MAX_SKEW, ChunkContext, Signatures, chunk_signature
from imstore.server.s3.xml import S3Error

botocore = pytest.importorskip("botocore", reason="botocore comes with the test extras (boto3)")
from botocore.auth import HmacV1QueryAuth, S3SigV4Auth, S3SigV4QueryAuth  # noqa: E402
from botocore.awsrequest import AWSRequest  # noqa: E402
from botocore.credentials import Credentials  # noqa: E402

KEY_ID, SECRET = "IMSTABCDEFGHIJKLMNOP", "s3cr3t-s3cr3t-s3cr3t-s3cr3t-s3cr3t-s3cr3"
NOW = datetime.datetime(2026, 3, 1, 12, 0, 0, tzinfo=datetime.UTC)
HOST = "127.0.0.1:9000"


def lookup(access_key_id: str):
    return ("laptop", SECRET, "write") if access_key_id == KEY_ID else None


def signatures(offset: float = 0.0) -> Signatures:
    return Signatures(lookup, clock=lambda: NOW.timestamp() + offset)


def botocore_signed(method: str, target: str, signer_class=S3SigV4Auth, secret: str = SECRET, body: bytes = b"", **signer_args):
    """(raw target, headers) of a request signed by botocore at NOW."""
    request = AWSRequest(method=method, url=f"http://{HOST}{target}", data=body, headers={"Host": HOST})
    if signer_class is S3SigV4Auth:
        request.headers["X-Amz-Content-SHA256"] = hashlib.sha256(body).hexdigest()
    credentials = Credentials(KEY_ID, secret)
    signer = signer_class(credentials, "s3", "us-east-1", **signer_args) if signer_class is not HmacV1QueryAuth else signer_class(
        credentials, **signer_args)  # fmt: skip
    with mock.patch("botocore.auth.get_current_datetime", return_value=NOW.replace(tzinfo=None)), \
            mock.patch("time.time", return_value=NOW.timestamp()):  # fmt: skip
        signer.add_auth(request)
    prepared = request.prepare()
    target_out = prepared.url.split(HOST, 1)[1]
    return target_out, CIMultiDict(prepared.headers.items())


def test_a_botocore_signed_request_is_accepted_with_its_query_and_odd_key():
    target, headers = botocore_signed("GET", "/bucket/a%20b/%C3%A9t%C3%A9+x?list-type=2&prefix=a%20b&max-keys=5")
    caller = signatures().check("GET", target, headers)
    assert (caller.name, caller.scope) == ("laptop", "write")
    assert caller.payload == hashlib.sha256(b"").hexdigest()


def test_a_changed_path_query_header_or_secret_does_not_match():
    target, headers = botocore_signed("PUT", "/bucket/key?x=1", body=b"data")
    signatures().check("PUT", target, headers)
    for method, changed_target in (("PUT", "/bucket/other?x=1"), ("PUT", "/bucket/key?x=2"), ("DELETE", target)):
        with pytest.raises(S3Error) as refused:
            signatures().check(method, changed_target, headers)
        assert refused.value.code == "SignatureDoesNotMatch"
    tampered = headers.copy()
    tampered["X-Amz-Content-SHA256"] = hashlib.sha256(b"other").hexdigest()
    with pytest.raises(S3Error) as refused_header:
        signatures().check("PUT", target, tampered)
    assert refused_header.value.code == "SignatureDoesNotMatch"
    target, headers = botocore_signed("GET", "/bucket/key", secret="not-the-secret")
    with pytest.raises(S3Error) as wrong_secret:
        signatures().check("GET", target, headers)
    assert wrong_secret.value.code == "SignatureDoesNotMatch"


def test_unknown_key_anonymous_and_skewed_clock_are_refused():
    target, headers = botocore_signed("GET", "/bucket/key")
    with pytest.raises(S3Error) as unknown:
        Signatures(lambda _: None, clock=lambda: NOW.timestamp()).check("GET", target, headers)
    assert unknown.value.code == "InvalidAccessKeyId"
    with pytest.raises(S3Error) as anonymous:
        signatures().check("GET", "/bucket/key", CIMultiDict({"Host": HOST}))
    assert anonymous.value.code == "AccessDenied"
    for offset in (MAX_SKEW + 60, -(MAX_SKEW + 60)):
        with pytest.raises(S3Error) as skewed:
            signatures(offset).check("GET", target, headers)
        assert skewed.value.code == "RequestTimeTooSkewed"
    signatures(MAX_SKEW - 60).check("GET", target, headers)


def test_the_derived_signing_key_is_computed_once_per_day_and_scope():
    checker = signatures()
    for name in ("a", "b", "c"):
        target, headers = botocore_signed("GET", f"/bucket/{name}")
        checker.check("GET", target, headers)
    assert len(checker._keys) == 1


def test_presigned_v4_urls_work_until_they_expire():
    target, headers = botocore_signed("GET", "/bucket/key", S3SigV4QueryAuth, expires=60)
    assert "X-Amz-Signature=" in target
    assert signatures(30).check("GET", target, headers).scope == "write"
    with pytest.raises(S3Error) as expired:
        signatures(120).check("GET", target, headers)
    assert expired.value.code == "AccessDenied"
    with pytest.raises(S3Error) as changed:
        signatures().check("GET", target.replace("/bucket/key", "/bucket/kez"), headers)
    assert changed.value.code == "SignatureDoesNotMatch"


def test_presigned_v2_urls_as_boto3_makes_by_default():
    target, headers = botocore_signed("GET", "/bucket/key?versionId=3", HmacV1QueryAuth, expires=60)
    assert "AWSAccessKeyId=" in target
    assert signatures().check("GET", target, headers).name == "laptop"
    with pytest.raises(S3Error) as changed:
        signatures().check("GET", target.replace("versionId=3", "versionId=2"), headers)
    assert changed.value.code == "SignatureDoesNotMatch"
    with pytest.raises(S3Error) as expired:
        signatures(3600).check("GET", target, headers)
    assert expired.value.code == "AccessDenied"


# AWS's published example of a signed streaming upload ("Signature Calculations for the Authorization
# Header: Transferring Payload in Multiple Chunks"): 65 KiB of 'a' in chunks of 64 KiB and 1 KiB.
AWS_KEY_ID, AWS_SECRET = "AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
AWS_SEED = "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9"
AWS_CHUNKS = ("ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648",
              "0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497",
              "b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9")  # fmt: skip


def aws_example_headers() -> CIMultiDict:
    return CIMultiDict({
        "Host": "s3.amazonaws.com", "x-amz-date": "20130524T000000Z", "x-amz-storage-class": "REDUCED_REDUNDANCY",
        "Content-Encoding": "aws-chunked", "x-amz-decoded-content-length": "66560", "Content-Length": "66824",
        "x-amz-content-sha256": "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
        "Authorization": f"AWS4-HMAC-SHA256 Credential={AWS_KEY_ID}/20130524/us-east-1/s3/aws4_request,"
                         "SignedHeaders=content-encoding;content-length;host;x-amz-content-sha256;x-amz-date;"
                         f"x-amz-decoded-content-length;x-amz-storage-class,Signature={AWS_SEED}",
    })  # fmt: skip


def aws_example_body(signatures_: tuple[str, ...] = AWS_CHUNKS) -> bytes:
    sizes = (65536, 1024, 0)
    chunks = zip(sizes, signatures_, strict=True)
    return b"".join(f"{size:x};chunk-signature={sig}\r\n".encode() + b"a" * size + b"\r\n" for size, sig in chunks)


def aws_example_context() -> ChunkContext:
    checker = Signatures(lambda key: ("aws", AWS_SECRET, "write") if key == AWS_KEY_ID else None,
                         clock=lambda: datetime.datetime(2013, 5, 24, tzinfo=datetime.UTC).timestamp())  # fmt: skip
    caller = checker.check("PUT", "/examplebucket/chunkObject.txt", aws_example_headers())
    assert caller.chunks is not None
    return caller.chunks


def pieces(data: bytes, size: int = 1000):
    return (data[i : i + size] for i in range(0, len(data), size))


def test_the_seed_and_every_chunk_signature_of_aws_example_are_checked():
    context = aws_example_context()
    assert chunk_signature(context, AWS_SEED, hashlib.sha256(b"a" * 65536).hexdigest()) == AWS_CHUNKS[0]
    assert b"".join(AwsChunkedBody(pieces(aws_example_body()), context, trailer_expected=False)) == b"a" * 66560
    bad = aws_example_body((AWS_CHUNKS[0], "0" * 64, AWS_CHUNKS[2]))
    with pytest.raises(S3Error) as refused:
        b"".join(AwsChunkedBody(pieces(bad), context, trailer_expected=False))
    assert refused.value.code == "SignatureDoesNotMatch"
    altered = aws_example_body().replace(b"a" * 10, b"b" * 10, 1)
    with pytest.raises(S3Error):
        b"".join(AwsChunkedBody(pieces(altered), context, trailer_expected=False))


def crc32_b64(data: bytes) -> str:
    return base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()


@pytest.mark.parametrize("ending", [b"\r\n\r\n", b"\r\n", b"\n"])
def test_unsigned_trailer_bodies_are_decoded_and_their_crc32_checked(ending: bytes):
    data = b"hello trailer " * 1000
    body = f"{len(data):x}\r\n".encode() + data + b"\r\n0\r\n" + f"x-amz-checksum-crc32:{crc32_b64(data)}".encode() + ending
    headers = CIMultiDict({"x-amz-trailer": "x-amz-checksum-crc32"})
    digests = Digests(headers, None)
    decoder = AwsChunkedBody(pieces(body, 7), None, trailer_expected=True)
    assert b"".join(digests.watch(decoder, decoder.trailers)) == data
    wrong = body.replace(crc32_b64(data).encode(), crc32_b64(b"other").encode())
    decoder = AwsChunkedBody(pieces(wrong, 7), None, trailer_expected=True)
    with pytest.raises(S3Error) as refused:
        b"".join(Digests(headers, None).watch(decoder, decoder.trailers))
    assert refused.value.code == "BadDigest"


def test_every_checksum_algorithm_matches_botocore():
    from botocore.httpchecksum import Crc32Checksum, Sha1Checksum, Sha256Checksum

    data = b"The quick brown fox jumps over the lazy dog" * 100
    headers = CIMultiDict()
    for name, checksum_class in (("crc32", Crc32Checksum), ("sha1", Sha1Checksum), ("sha256", Sha256Checksum)):
        checksum = checksum_class()
        checksum.update(data)
        headers[f"x-amz-checksum-{name}"] = base64.b64encode(checksum.digest()).decode()
    headers["x-amz-checksum-crc32c"] = base64.b64encode((0xE3069283).to_bytes(4, "big")).decode()  # CRC32C of "123456789"
    check_value = Digests(CIMultiDict({"x-amz-checksum-crc32c": headers.pop("x-amz-checksum-crc32c")}), None)
    assert b"".join(check_value.watch([b"123456789"])) == b"123456789"
    assert b"".join(Digests(headers, None).watch(pieces(data, 333))) == data
    crc64 = base64.b64encode((0xAE8B14860A799888).to_bytes(8, "big")).decode()  # CRC64NVME of "123456789"
    assert b"".join(Digests(CIMultiDict({"x-amz-checksum-crc64nvme": crc64}), None).watch([b"1234", b"56789"])) == b"123456789"


@pytest.mark.parametrize("text", ["20260301T120000", "2026-03-01T12:00:00Z", "20261301T120000Z", "20260230T120000Z", ""])
def test_a_malformed_amz_date_is_refused(text: str):
    target, headers = botocore_signed("GET", "/bucket/key")
    headers["X-Amz-Date"] = text
    with pytest.raises(S3Error) as refused:
        signatures().check("GET", target, headers)
    assert refused.value.status == 403



@pytest.mark.parametrize(("algorithm", "width", "polynomial"), [("crc32c", 32, 0x82F63B78), ("crc64nvme", 64, 0x9A6C9329AC4BC9B5)])
def test_the_c_crcs_agree_with_the_table_fallback(algorithm: str, width: int, polynomial: int):
    import os

    from imstore.server.s3.digests import _hasher, _ReflectedCrc

    fast = _hasher(algorithm)
    if fast.accelerated is None:
        pytest.skip("awscrt is not installed")
    data = os.urandom(100_000)
    slow = _ReflectedCrc(width, polynomial)
    for piece in (data[:777], data[777:]):
        fast.update(piece)
        slow.update(piece)
    assert fast.digest() == slow.digest()


@pytest.mark.parametrize("size", [1, 2, 5, 4096, 70_000, 1 << 20])
def test_chunked_bodies_decode_the_same_whatever_the_pieces_they_arrive_in(size: int):
    """The decoder passes data on as views of the pieces it gets: a chunk header or CRLF split across pieces,
    pieces holding several chunks, and a signed body cut anywhere give the same bytes and the same checks."""
    context = aws_example_context()
    decoded = list(AwsChunkedBody(pieces(aws_example_body(), size), context, trailer_expected=False))
    assert b"".join(decoded) == b"a" * 66560
    assert sum(len(piece) for piece in decoded) == 66560
    data = os.urandom(300_000)
    chunks = b"".join(f"{len(data[i : i + 65536]):x}\r\n".encode() + data[i : i + 65536] + b"\r\n" for i in range(0, len(data), 65536))
    body = chunks + b"0\r\n" + f"x-amz-checksum-crc32:{crc32_b64(data)}\r\n\r\n".encode()
    headers = CIMultiDict({"x-amz-trailer": "x-amz-checksum-crc32"})
    decoder = AwsChunkedBody(pieces(body, size), None, trailer_expected=True)
    assert b"".join(Digests(headers, None).watch(decoder, decoder.trailers)) == data
    assert decoder.trailers == {"x-amz-checksum-crc32": crc32_b64(data)}
    with pytest.raises(S3Error) as long_line:
        list(AwsChunkedBody(pieces(b"1" * 5000 + b"\r\n", size), None, trailer_expected=False))
    assert long_line.value.code == "IncompleteBody"


def test_the_crc32_of_isal_is_zlibs():
    from imstore.server.s3.digests import _CRC32, _Crc32

    if _CRC32 is zlib.crc32:
        pytest.skip("isal is not installed: zlib's CRC32 is used")
    data = os.urandom(1 << 20)
    fast, slow = _Crc32(), _Crc32(zlib.crc32)
    for start in range(0, len(data), 100_003):
        fast.update(memoryview(data)[start : start + 100_003])
        slow.update(data[start : start + 100_003])
    assert fast.digest() == slow.digest() == zlib.crc32(data).to_bytes(4, "big")
