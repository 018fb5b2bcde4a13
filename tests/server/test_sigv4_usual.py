"""The short SigV4 check of the most common request agrees with the general check, request for request (RP7)."""

from __future__ import annotations

import random

import pytest

from imstore.server.s3 import sigv4
from imstore.server.s3.xml import S3Error

from .test_s3_sigv4 import MAX_SKEW, botocore_signed, signatures

pytest.importorskip("botocore", reason="botocore comes with the test extras (boto3)")


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
            for name, value in (("X-Amz-Date", "20260301T120001Z"), ("Host", "127.0.0.1:9001"),
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


def test_the_short_path_is_taken_for_the_common_request():
    target, headers = botocore_signed("GET", "/bucket/key")
    checker = signatures()
    taken = []
    short = checker._check_usual
    checker._check_usual = lambda *args: taken.append(short(*args)) or taken[-1]
    caller = checker.check("GET", target, headers)
    assert taken == [caller] and caller.name == "laptop"


def test_trim_is_awss_trim():
    alphabet = " \t\n\r\x0b\x0c\xa0\u2003ab:1"
    chooser = random.Random(7)
    for _ in range(20000):
        value = "".join(chooser.choice(alphabet) for _ in range(chooser.randint(0, 8)))
        assert sigv4._trim(value) == " ".join(value.split()), repr(value)
