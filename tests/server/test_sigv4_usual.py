"""The short SigV4 check of the most common request agrees with the general check, request for request (RP7)."""

from __future__ import annotations

import hashlib
import hmac
import random
from unittest import mock

import pytest
from multidict import CIMultiDict

from imstore.server.s3 import sigv4
from imstore.server.s3.xml import S3Error

from .test_s3_sigv4 import HOST, KEY_ID, MAX_SKEW, NOW, SECRET, botocore_signed, signatures

pytest.importorskip("botocore", reason="botocore comes with the test extras (boto3)")
from botocore.auth import S3SigV4Auth  # noqa: E402
from botocore.awsrequest import AWSRequest  # noqa: E402
from botocore.credentials import Credentials  # noqa: E402


def general_only(checker: sigv4.Signatures, method: str, target: str, headers):
    """The verdict of the general check alone (the short path turned off)."""
    checker._check_usual = lambda *args: None
    return verdict(checker, method, target, headers)


def verdict(checker: sigv4.Signatures, method: str, target: str, headers):
    try:
        return checker.check(method, target, headers)
    except S3Error as exc:
        return (exc.status, exc.code)


def variants():
    """Requests the short path takes, and ones it must hand on: odd paths, queries, bad values of every part."""
    for target in ("/bucket/key", "/bucket/dir/file.txt", "/b-1/a_b~c.d", "/bucket/a%20b", "/bucket/x?versionId=3"):
        for method in ("GET", "PUT"):
            signed_target, headers = botocore_signed(method, target)
            yield "as signed", method, signed_target, headers, 0.0
            for name, value in (("X-Amz-Date", "20260301T120001Z"), ("Host", "127.0.0.1:9001"), ("Host", " 127.0.0.1:9000 "),
                                ("Host", "127.0.0.1:\t9000"), ("X-Amz-Content-SHA256", " " + headers["X-Amz-Content-SHA256"]),
                                ("X-Amz-Content-SHA256", "UNSIGNED-PAYLOAD")):  # fmt: skip
                changed = headers.copy()
                changed[name] = value
                yield f"changed {name}", method, signed_target, changed, 0.0
            for name in ("X-Amz-Date", "X-Amz-Content-SHA256", "Host"):
                missing = headers.copy()
                del missing[name]
                yield f"without {name}", method, signed_target, missing, 0.0
            authorization = headers["Authorization"]
            for label, replaced in (("another key id", authorization.replace("IMSTABCDEFGHIJKLMNOP", "IMSTZZZZZZZZZZZZZZZZ")),
                                    ("a wrong signature", authorization[:-1] + ("0" if authorization[-1] != "0" else "1")),
                                    ("another date in the scope", authorization.replace("/20260301/", "/20260302/")),
                                    ("not aws4_request", authorization.replace("aws4_request", "aws4_requests")),
                                    ("a non-ASCII signature", authorization[:-1] + "é")):  # fmt: skip
                odd = headers.copy()
                odd["Authorization"] = replaced
                yield label, method, signed_target, odd, 0.0
            yield "a skewed clock", method, signed_target, headers, MAX_SKEW + 5
            yield "within the skew", method, signed_target, headers, MAX_SKEW - 5


@pytest.mark.parametrize("case", list(variants()), ids=lambda case: f"{case[1]} {case[2]} {case[0]}")
def test_the_short_and_the_general_check_agree(case):
    _, method, target, headers, offset = case
    expected = general_only(signatures(offset), method, target, headers)
    assert verdict(signatures(offset), method, target, headers) == expected


def assert_checked_on_the_short_path(target: str, headers) -> None:
    checker = signatures()
    taken = []
    short = checker._check_usual
    checker._check_usual = lambda *args: taken.append(short(*args)) or taken[-1]
    caller = checker.check("GET", target, headers)
    assert taken == [caller] and caller.name == "laptop"


def test_the_short_path_is_taken_for_the_common_request():
    assert_checked_on_the_short_path(*botocore_signed("GET", "/bucket/key"))


def test_trim_is_awss_trim():
    alphabet = " \t\n\r\x0b\x0c\xa0\u2003ab:1"
    chooser = random.Random(7)
    for _ in range(20000):
        value = "".join(chooser.choice(alphabet) for _ in range(chooser.randint(0, 8)))
        assert sigv4._trim(value) == " ".join(value.split()), repr(value)


def test_the_kept_hmac_pads_give_hmac_sha256():
    chooser = random.Random(11)
    for _ in range(300):
        key = chooser.randbytes(chooser.choice((32, 1, 0, 63, 64)))  # derived keys are 32 bytes; the rest: pads
        message = chooser.randbytes(chooser.randint(0, 300))
        assert sigv4.DerivedKey(key).hmac_hex(message) == hmac.new(key, message, hashlib.sha256).hexdigest()


def test_authorization_spellings_the_short_path_hands_on_get_the_general_verdict():
    """Upper-case hex, no space after a comma, extra fields, odd characters: whatever the short path's regex
    does not take, the general check decides, and both agree on the verdict."""
    target, headers = botocore_signed("GET", "/bucket/key")
    authorization = headers["Authorization"]
    head, _, signature = authorization.rpartition("Signature=")
    for changed in (head + "Signature=" + signature.upper(), authorization.replace(", ", ","),
                    authorization + ", Extra=1", authorization.replace("Credential=", "Credential= "),
                    authorization.replace("SignedHeaders=host;", "SignedHeaders=Host;"),
                    authorization.replace("/us-east-1/", "/us_east 1/"), authorization.replace("AWS4-", "aws4-")):  # fmt: skip
        odd = headers.copy()
        odd["Authorization"] = changed
        assert verdict(signatures(), "GET", target, odd) == general_only(signatures(), "GET", target, odd), changed


def signed_with_header(name: str, value: str):
    """A GET signed by botocore at NOW with one more (signed) header."""
    request = AWSRequest(method="GET", url=f"http://{HOST}/bucket/key", headers={"Host": HOST, name: value})
    request.headers["X-Amz-Content-SHA256"] = hashlib.sha256(b"").hexdigest()
    with mock.patch("botocore.auth.get_current_datetime", return_value=NOW.replace(tzinfo=None)):
        S3SigV4Auth(Credentials(KEY_ID, SECRET), "s3", "us-east-1").add_auth(request)
    assert name.lower() in request.headers["Authorization"]
    return "/bucket/key", CIMultiDict(request.prepare().headers.items())


@pytest.mark.parametrize("value", ["  two  spaces\tand a tab ", "one space", "\xa0nbsp", "plain"])
def test_values_with_spaces_or_controls_are_trimmed_on_the_short_path_too(value: str):
    assert_checked_on_the_short_path(*signed_with_header("X-Amz-Meta-A", value))
