"""Header parsing on its own: ranges (RFC 9110), ETags, preconditions, percent-encoded text."""

from __future__ import annotations

import pytest

from imstore.errors import InvalidInput, InvalidVersion, UsageError
from imstore.server.headers import encode_text, etag_matches, meta_header, non_negative, parse_range, positive, preconditions, text_header
from imstore.validate import MAX_NUMBER


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
        ("bytes=\u00b2-", 100, None),  # '²'.isdigit() is True, but it is no number
        ("bytes=" + "9" * 5000 + "-", 100, "unsatisfiable"),  # int() refuses 4300+ digits
        ("bytes=0-" + "9" * 5000, 100, (0, 100)),
        ("bytes=-" + "9" * 5000, 100, (0, 100)),
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
    assert preconditions({"If-Match": f'"v{MAX_NUMBER}"'}) == {"if_version": MAX_NUMBER}
    for bad in ('"3"', "v3", '"vx"', '"v-1"', '"v\u00b2"', f'"v{MAX_NUMBER + 1}"', '"v' + "9" * 5000 + '"'):
        with pytest.raises(InvalidVersion):
            preconditions({"If-Match": bad})
    with pytest.raises(UsageError):
        preconditions({"If-None-Match": '"abc"'})


def test_if_match_takes_star_and_the_etags_of_key_reads():
    object_id = "ab" * 32
    assert preconditions({"If-Match": " * "}) == {"if_match": "*"}
    assert preconditions({"If-Match": f'"v7-{object_id}"'}) == {"if_match": ((7, object_id),)}
    both = preconditions({"If-Match": f'"v7-{object_id}", W/"v8-{object_id}", "v9-{object_id}"'})
    assert both == {"if_match": ((7, object_id), (9, object_id))}  # a weak tag never matches a write
    for bad in (f'"v7-{object_id[:-1]}"', f"v7-{object_id}", f'"v7-{object_id.upper()}"', f'"v-{object_id}"', f'"7-{object_id}"', '""'):
        with pytest.raises(InvalidVersion):
            preconditions({"If-Match": bad})


def test_text_travels_percent_encoded_both_ways():
    text = "première ligne\tet un ☃"
    assert text_header(encode_text(text)) == text
    assert text_header(None) is None
    with pytest.raises(InvalidInput):
        text_header("%ff")
    assert meta_header(encode_text('{"k": "v"}')) == {"k": "v"}
    with pytest.raises(InvalidInput):
        meta_header(encode_text("[1]"))


@pytest.mark.parametrize("read", [positive, non_negative])
def test_counts_in_query_strings_are_bounded_ascii_integers(read):
    assert read("42", "limit") == 42 and read(str(MAX_NUMBER), "limit") == MAX_NUMBER and read("007", "limit") == 7
    for bad in ("\u00b2", "\u0661", "-1", "1.0", str(MAX_NUMBER + 1), "9" * 5000):
        with pytest.raises(InvalidInput):
            read(bad, "limit")
    with pytest.raises(InvalidInput):
        positive("0", "limit")
    assert non_negative("0", "after") == 0
