"""Object ids: BLAKE3-256 hex, and the checks that keep a hash from becoming a path."""

from __future__ import annotations

import pytest

from imstore.errors import InvalidHash
from imstore.hashing import EMPTY_HASH, checksum16, hash_bytes, validate_object_id, validate_prefix

# Published BLAKE3 test vector for the empty input.
BLAKE3_EMPTY = "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"


def test_hash_bytes_is_blake3_256_hex():
    assert hash_bytes(b"") == BLAKE3_EMPTY == EMPTY_HASH
    assert len(hash_bytes(b"abc")) == 64
    assert hash_bytes(b"abc") != hash_bytes(b"abd")


def test_checksum16_is_16_bytes_and_a_prefix_of_the_hash():
    assert len(checksum16(b"payload")) == 16
    assert checksum16(b"payload").hex() == hash_bytes(b"payload")[:32]


def test_validate_object_id_accepts_full_lowercase_hex():
    assert validate_object_id(BLAKE3_EMPTY) == BLAKE3_EMPTY


@pytest.mark.parametrize(
    "value",
    [BLAKE3_EMPTY.upper(), BLAKE3_EMPTY[:-1], BLAKE3_EMPTY + "0", "../" + BLAKE3_EMPTY[3:], "g" * 64, "", None, 123],
)
def test_validate_object_id_rejects_everything_else(value):
    with pytest.raises(InvalidHash):
        validate_object_id(value)


@pytest.mark.parametrize("value, expected", [("ABCDEF01", "abcdef01"), (" af1349b9 ", "af1349b9"), (BLAKE3_EMPTY, BLAKE3_EMPTY)])
def test_validate_prefix_normalises(value, expected):
    assert validate_prefix(value) == expected


@pytest.mark.parametrize("value", ["abc", "abcdef0", "abcdefgh", "-1234567", BLAKE3_EMPTY + "a", "../../etc", "", None])
def test_validate_prefix_rejects_short_or_non_hex(value):
    with pytest.raises(InvalidHash):
        validate_prefix(value)
