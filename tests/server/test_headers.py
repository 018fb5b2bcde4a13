"""Header parsing on its own: ranges (RFC 9110), ETags, preconditions, percent-encoded text."""

from __future__ import annotations

import pytest

from imstore.errors import InvalidInput, InvalidVersion, UsageError
from imstore.server.headers import encode_text, etag_matches, meta_header, parse_range, preconditions, text_header


@pytest.mark.parametrize(
    "header, size, expected",
    [
        ("bytes=0-9", 100, (0, 10)),
        ("bytes=90-", 100, (90, 100)),
        ("bytes=90-500", 100, (90, 100)),
        ("bytes=-10", 100, (90, 100)),
        ("bytes=-500", 100, (0, 100)),
        ("bytes=100-", 100, "unsatisfiable"),
        ("bytes=5-4", 100, "unsatisfiable"),
        ("bytes=-0", 100, "unsatisfiable"),
        ("bytes=0-", 0, "unsatisfiable"),
        ("bytes=0-1,5-6", 100, None),  # several ranges: answered whole
        ("items=0-1", 100, None),
        ("bytes=a-b", 100, None),
        ("bytes=", 100, None),
    ],
)
def test_parse_range(header, size, expected):
    assert parse_range(header, size) == expected


def test_etag_matching_takes_lists_weak_tags_and_star():
    assert etag_matches('"abc"', "abc") and etag_matches('W/"abc"', "abc") and etag_matches('"x", "abc"', "abc")
    assert etag_matches("*", "abc") and not etag_matches('"abd"', "abc") and not etag_matches(None, "abc")


def test_preconditions():
    assert preconditions({}) == {}
    assert preconditions({"If-Match": '"v3"'}) == {"if_version": 3}
    assert preconditions({"If-Match": '"v0"'}) == {"if_version": 0}
    assert preconditions({"If-None-Match": "*"}) == {"if_absent": True}
    for bad in ('"3"', "v3", '"vx"', '"v-1"'):
        with pytest.raises(InvalidVersion):
            preconditions({"If-Match": bad})
    with pytest.raises(UsageError):
        preconditions({"If-None-Match": '"abc"'})


def test_text_travels_percent_encoded_both_ways():
    text = "première ligne\tet un ☃"
    assert text_header(encode_text(text)) == text
    assert text_header(None) is None
    with pytest.raises(InvalidInput):
        text_header("%ff")
    assert meta_header(encode_text('{"k": "v"}')) == {"k": "v"}
    with pytest.raises(InvalidInput):
        meta_header(encode_text("[1]"))
