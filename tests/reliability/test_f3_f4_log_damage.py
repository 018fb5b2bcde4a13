"""F3: a torn or garbage log tail is cut back with a warning; F4: damage mid-log fails loudly, naming the offset."""

from __future__ import annotations

import os

import pytest

from imstore import Store
from imstore.errors import CorruptLog
from imstore.log import HEADER_SIZE

LOG = "log/00000000000000000000.log"


def build(store_path, count: int = 4) -> list[tuple[int, int]]:
    """count versions of "k" (v1..), returning each frame's (offset, end)."""
    with Store.open(store_path) as store:
        for number in range(1, count + 1):
            store.put("k", f"version {number}".encode())
        return [(frame.offset, frame.end) for frame in store.log.scan()]


def drop_index(store_path) -> None:
    for path in store_path.glob("index.sqlite*"):
        path.unlink()


def check_recovered(store_path, good_versions: int) -> None:
    """Earlier versions readable; the next append cuts the tail with a warning and works; verify clean."""
    with Store.open(store_path) as store:
        assert store.get("k") == f"version {good_versions}".encode()
        for number in range(1, good_versions + 1):
            assert store.get("k", version=number) == f"version {number}".encode()
        result = store.put("k", b"after repair")
        assert result.version.version == good_versions + 1
        assert any("torn" in warning for warning in store.warnings)
        report = store.verify()
        assert report.ok and not report.warnings, (report.problems, report.warnings)


def test_f3_last_record_truncated_at_every_length(store_path):
    frames = build(store_path)
    log_path = store_path / LOG
    whole = log_path.read_bytes()
    last_start, last_end = frames[-1]
    for cut in range(last_start + 1, last_end):
        log_path.write_bytes(whole[:cut])
        drop_index(store_path) if cut % 2 else None  # both with a rebuilt and with a caught-up index
        check_recovered(store_path, good_versions=len(frames) - 1)
        assert log_path.stat().st_size > last_start  # the repair appended a new record after the cut
        log_path.write_bytes(whole)
        drop_index(store_path)


@pytest.mark.parametrize(
    "tail",
    [b"\x00", b"\x00" * HEADER_SIZE, b"\x00" * 65536, b"junk", os.urandom(5000), b"\xff" * 4 + b"\x00" * 16 + b"x" * 10],
    ids=["zero", "zero-header", "64k-zeros", "junk", "random-5000", "huge-length"],
)
def test_f3_zeros_or_junk_appended(store_path, tail):
    frames = build(store_path)
    with (store_path / LOG).open("ab") as handle:
        handle.write(tail)
    with Store.open(store_path) as reader:
        assert reader.get("k") == f"version {len(frames)}".encode()
        assert reader.verify().ok and reader.verify().warnings  # a warning, not a failure; readers do not cut
    check_recovered(store_path, good_versions=len(frames))


def _flip(path, position: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[position] ^= 0x10
    path.write_bytes(bytes(raw))


def test_f4_a_flipped_byte_in_an_earlier_record_costs_that_record_only(store_path):
    """HARDENING D7: verify names the frame (exit 5); the index is rebuilt around it; every intact record stays readable."""
    frames = build(store_path)
    log_path = store_path / LOG
    whole = log_path.read_bytes()
    start, end = frames[1]
    for position in range(start, end):
        log_path.write_bytes(whole)
        _flip(log_path, position)
        with Store.open(store_path) as store:
            report = store.verify()
            assert not report.ok and any(f"offset {start}" in problem for problem in report.problems), (position, report.problems)
        drop_index(store_path)  # an open that has to replay the log steps over the damaged frame
        with Store.open(store_path) as store:
            assert store.get("k") == b"version 4"
            assert store.get("k", version=1) == b"version 1" and store.get("k", version=3) == b"version 3"
            with pytest.raises(CorruptLog, match=f"offset\\(s\\) {start}"):
                store.get("k", version=2)
            assert store.put("k", b"on top").version.version == 5  # writes go on, and say so
            assert any(f"damaged at offset(s) {start}" in warning for warning in store.warnings)
            assert any(f"offset {start}" in problem for problem in store.verify().problems)
    log_path.write_bytes(whole)


def test_f4_a_flipped_byte_in_the_last_record_is_not_cut_off_as_a_torn_tail(store_path):
    """Rot in the newest acknowledged record must not be 'repaired' by cutting it away."""
    frames = build(store_path)
    log_path = store_path / LOG
    whole = log_path.read_bytes()
    start, end = frames[-1]
    for position in range(start, end):
        log_path.write_bytes(whole)
        _flip(log_path, position)
        drop_index(store_path)
        with Store.open(store_path) as store:
            with pytest.raises(CorruptLog, match=f"offset {start}"):
                store.put("k", b"a writer must not cut an acknowledged record")
            assert store.verify().problems
        assert log_path.stat().st_size == len(whole), f"flip at {position} was cut off"


def test_f4_a_rewritten_record_with_a_valid_checksum_breaks_the_chain(store_path):
    """A record replaced by a well-formed one (checksum recomputed) is caught by the hash chain."""
    from imstore.hashing import checksum16
    from imstore.log import HEADER

    frames = build(store_path)
    log_path = store_path / LOG
    raw = bytearray(log_path.read_bytes())
    start, end = frames[1]
    payload = bytearray(raw[start + HEADER_SIZE : end])
    payload[payload.index(b"prev") + 6] ^= 0x01  # one byte of the prev hash
    raw[start:end] = HEADER.pack(len(payload), checksum16(bytes(payload))) + payload
    log_path.write_bytes(bytes(raw))
    drop_index(store_path)
    with Store.open(store_path) as store:
        with pytest.raises(CorruptLog, match=f"chain is broken at offset {start}"):
            store.get("k")
        assert any("chain" in problem for problem in store.verify().problems)
