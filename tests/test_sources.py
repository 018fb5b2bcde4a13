"""Small helpers of sources.py shared by the CLI and the remote client."""

from __future__ import annotations

import io
import os

from imstore.sources import regular_file_size


def test_regular_file_size_is_what_is_left_to_read(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"0123456789")
    with open(path, "rb") as source:
        assert regular_file_size(source) == 10
        source.read(4)
        assert regular_file_size(source) == 6


def test_regular_file_size_is_none_for_a_pipe_or_a_stream_without_a_file():
    read_end, write_end = os.pipe()
    with os.fdopen(read_end, "rb") as pipe, os.fdopen(write_end, "wb"):
        assert regular_file_size(pipe) is None
    assert regular_file_size(io.BytesIO(b"abc")) is None
