"""Keys, version numbers, times and metadata: what users hand us is checked here."""

from __future__ import annotations

import pytest

from imstore.errors import InvalidInput, InvalidKey, InvalidTime, InvalidVersion
from imstore.validate import MAX_KEY_BYTES, MAX_NUMBER, format_time, parse_size, parse_time, parse_version, validate_key, validate_meta


@pytest.mark.parametrize(
    "key",
    ["a", "notes/todo.txt", "../x", "%2e%2e%2f", "%252e%252e%252f", "\uff0e\uff0e\uff0f", "/abs", " padded ", "ü" * 512, "x" * 1024],
)
def test_valid_keys_are_returned_unchanged(key):
    assert validate_key(key) == key


@pytest.mark.parametrize(
    "key, reason",
    [
        ("", "empty"),
        ("   ", "whitespace"),
        ("\u3000\n", "whitespace"),
        ("a\x00b", "control"),
        ("a\tb", "control"),
        ("a\x7fb", "control"),
        ("a\x85b", "control"),
        ("a\udc80b", "surrogate"),
        ("x" * (MAX_KEY_BYTES + 1), "at most"),
        ("ü" * 513, "at most"),
        ("k" * (1 << 20), "at most"),
        (b"bytes", "string"),
        (None, "string"),
    ],
)
def test_invalid_keys_are_rejected_saying_why(key, reason):
    with pytest.raises(InvalidKey, match=reason):
        validate_key(key)


def test_keys_are_not_normalised():
    composed, decomposed = "\u00e9", "e\u0301"
    assert validate_key(composed) != validate_key(decomposed)


@pytest.mark.parametrize("text, number", [(1, 1), ("1", 1), (" 7 ", 7), ("0042", 42), (10**12, 10**12)])
def test_version_numbers(text, number):
    assert parse_version(text) == number


@pytest.mark.parametrize(
    "text", ["", "abc", "-1", "0", 0, -3, "1.5", 1.0, True, None, "١", "1e3", "0x10", "99999999999999999999", 1 << 63, "9" * 5000]
)
def test_bad_version_numbers(text):
    with pytest.raises(InvalidVersion):
        parse_version(text)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("1970-01-01T00:00:00Z", 1_000_000_000 - 1),
        ("1970-01-01T00:00:01", 2_000_000_000 - 1),
        ("1970-01-01T01:00:00+01:00", 1_000_000_000 - 1),
        ("2026-11-28T12:00:00.123Z", 1_795_867_200_124_000_000 - 1),
        ("1970-01-01", 86_400 * 1_000_000_000 - 1),
    ],
)
def test_parse_time_is_the_last_nanosecond_of_what_it_names(text, expected):
    assert parse_time(text) == expected


@pytest.mark.parametrize(
    "text", ["", "yesterday", "2026-13-01", "12:00", None, "9999-12-31T23:59:59Z", "0001-01-01", "2262-04-11T23:47:17Z", "1677-09-20"]
)
def test_bad_times(text):
    with pytest.raises(InvalidTime):
        parse_time(text)


def test_times_at_the_edges_of_the_range_are_accepted():
    assert MAX_NUMBER - 2_000_000_000 < parse_time("2262-04-11T23:47:15Z") <= MAX_NUMBER
    assert -MAX_NUMBER <= parse_time("1677-09-22") < 0


def test_an_out_of_range_version_on_the_command_line_is_exit_2(cli):
    assert cli("put", "k", stdin=b"x").code == 0
    for option in (["--version", "99999999999999999999"], ["--at", "9999-12-31T23:59:59Z"], ["--at", "0001-01-01"]):
        result = cli("get", "k", *option)
        assert result.code == 2, (option, result.code, result.stderr)


def test_format_time_round_trips_milliseconds():
    moment = parse_time("2026-11-28T12:00:00.123Z")
    assert format_time(moment) == "2026-11-28T12:00:00.123Z"
    assert parse_time(format_time(moment - 999_999)) == moment


def test_meta_accepts_small_text_maps():
    assert validate_meta(None) == {}
    assert validate_meta({"a": "b", "ü": ""}) == {"a": "b", "ü": ""}


@pytest.mark.parametrize(
    "meta",
    [{"": "x"}, {"a": 1}, {1: "a"}, {"a": "\udc80"}, {str(i): "v" for i in range(65)}, {"big": "v" * (64 * 1024)}, ["a"]],
)
def test_meta_rejects_bad_maps(meta):
    with pytest.raises(InvalidInput):
        validate_meta(meta)



@pytest.mark.parametrize(
    "text, size",
    [
        ("4096", 4096), (4096, 4096), ("0", 0), ("100K", 100 << 10), ("10M", 10 << 20), ("1G", 1 << 30), ("1T", 1 << 40),
        ("1GiB", 1 << 30), ("1gb", 1 << 30), ("512m", 512 << 20), ("100b", 100), (" 1 G ", 1 << 30),
        ("1.5G", 3 << 29), ("1.5M", 3 << 19), (".5k", 512), ("0.1K", 102), ("1.", 1),
    ],
)  # fmt: skip
def test_sizes_take_binary_units_and_fractions(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize(
    "text, reason",
    [("", "not a size"), ("abc", "not a size"), ("-1", "not a size"), ("1Q", "not a size"), ("1KK", "not a size"),
     ("1e3", "not a size"), ("inf", "not a size"), ("nan", "not a size"), ("1.2.3", "not a size"), ("0x10", "not a size"),
     (True, "not a size"), (None, "not a size"), (-1, "negative"), ("9" * 5000, "at most"),
     ("9999999T", "at most"), (MAX_NUMBER + 1, "at most")],
)  # fmt: skip
def test_bad_sizes_are_clear_errors(text, reason):
    with pytest.raises(InvalidInput, match=reason) as caught:
        parse_size(text)
    assert len(str(caught.value)) < 200  # a huge argument is not echoed whole


def test_the_old_import_paths_of_parse_size_are_the_one_parser():
    from imstore.cache import parse_size as cache_parse_size
    from imstore.server.gateway import parse_size as gateway_parse_size

    assert cache_parse_size is parse_size and gateway_parse_size is parse_size
