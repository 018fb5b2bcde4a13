"""The log: framing, the hash chain, torn tails versus mid-log damage, hostile bytes."""

from __future__ import annotations

import struct

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imstore.errors import CorruptLog, Unavailable
from imstore.hashing import blake3, checksum16, hash_bytes
from imstore.log import GENESIS, HEADER_SIZE, Log, batch_payload, decode_payload, encode_record, frame_bytes


def payload(seq: int = 1, key: str = "k", version: int = 1, prev: bytes = GENESIS, op: str = "put", **extra) -> bytes:
    fields = dict(
        seq=seq,
        time_ns=1_000 + seq,
        op=op,
        key=key,
        version=version,
        hash=None if op == "delete" else hash_bytes(key.encode() + bytes([version])),
        size=0 if op == "delete" else 3,
        content_type=None,
        meta={},
        message=None,
        prev=prev,
    )
    fields.update(extra)
    return encode_record(**fields)


def chain(count: int) -> list[bytes]:
    payloads, prev = [], GENESIS
    for seq in range(1, count + 1):
        item = payload(seq, key=f"k{seq % 3}", version=seq, prev=prev)
        prev = blake3(item).digest()
        payloads.append(item)
    return payloads


@pytest.fixture
def log(tmp_path):
    directory = tmp_path / "log"
    directory.mkdir()
    return Log(directory)


def fill(log: Log, payloads: list[bytes]) -> list[tuple[int, int]]:
    spans, end = [], 0
    for item in payloads:
        with log.locked():
            spans.append(log.append(item, end))
        end = spans[-1][1]
    return spans


# ------------------------------------------------------------------ framing and chain
def test_frame_layout_is_length_checksum_payload():
    item = payload()
    frame = frame_bytes(item)
    assert frame[:4] == struct.pack(">I", len(item))
    assert frame[4:20] == checksum16(item)
    assert frame[20:] == item and HEADER_SIZE == 20


def test_record_round_trip_and_record_hash():
    item = payload(seq=5, key="ü/x", version=2, message="m", meta={"a": "b"}, content_type="text/plain")
    (record,) = decode_payload(item)
    fields = (record.seq, record.key, record.version, record.message, record.meta, record.content_type)
    assert fields == (5, "ü/x", 2, "m", {"a": "b"}, "text/plain")
    assert record.record_hash == blake3(item).digest()
    assert record.hash == hash_bytes("ü/x".encode() + b"\x02")


def test_tombstone_round_trip():
    (record,) = decode_payload(payload(op="delete"))
    assert record.deleted and record.hash is None


def test_batch_is_one_frame_of_many_records():
    items = chain(3)
    records = decode_payload(batch_payload(items))
    assert [record.seq for record in records] == [1, 2, 3]


def test_append_and_scan(log):
    items = chain(5)
    spans = fill(log, items)
    frames = list(log.scan())
    assert [(frame.offset, frame.end) for frame in frames] == spans
    assert [frame.records[0].seq for frame in frames] == [1, 2, 3, 4, 5]
    assert log.torn_at is None
    assert [frame.records[0].seq for frame in log.scan(spans[2][0])] == [3, 4, 5]
    assert log.read_frame_at(spans[1][0]).records[0].seq == 2
    assert log.frame_header_at(spans[1][0]) == (len(items[1]), checksum16(items[1]))


def test_each_record_points_at_the_previous(log):
    fill(log, chain(4))
    records = [frame.records[0] for frame in log.scan()]
    assert records[0].prev == GENESIS
    for before, after in zip(records, records[1:], strict=False):
        assert after.prev == before.record_hash


def test_append_refuses_when_the_log_is_not_where_the_caller_thinks(log):
    fill(log, chain(1))
    with pytest.raises(CorruptLog, match="without the lock"):
        log.append(payload(seq=2), expected_size=0)


def test_missing_log_file_scans_empty_but_missing_directory_is_unavailable(log):
    assert list(log.scan()) == [] and log.size() == 0
    log.directory.rmdir()
    with pytest.raises(Unavailable):
        list(log.scan())
    with pytest.raises(Unavailable):
        log.size()


# ------------------------------------------------------------------ torn tail vs mid-log damage
def test_every_truncation_of_the_last_frame_is_a_quiet_torn_tail(log):
    spans = fill(log, chain(3))
    whole = log.path.read_bytes()
    last_start = spans[-1][0]
    for cut in range(last_start + 1, len(whole)):
        log.path.write_bytes(whole[:cut])
        assert [frame.records[0].seq for frame in log.scan()] == [1, 2], cut
        assert log.torn_at == last_start


@pytest.mark.parametrize("tail", [b"\x00" * 7, b"\x00" * 4096, b"\xde\xad\xbe\xef" * 9, b"\xff" * 20])
def test_zeros_or_junk_after_the_last_frame_are_a_torn_tail(log, tail):
    spans = fill(log, chain(2))
    with log.path.open("ab") as handle:
        handle.write(tail)
    assert len(list(log.scan())) == 2
    assert log.torn_at == spans[-1][1]
    log.truncate(log.torn_at)
    with log.locked():
        log.append(chain(3)[2], spans[-1][1])
    assert [frame.records[0].seq for frame in log.scan()] == [1, 2, 3] and log.torn_at is None


def test_a_flipped_byte_in_an_earlier_record_is_a_hard_error_naming_the_offset(log):
    spans = fill(log, chain(4))
    raw = bytearray(log.path.read_bytes())
    start, end = spans[1]
    for position in (start + 2, start + HEADER_SIZE - 1, start + HEADER_SIZE + 3, end - 1):
        damaged = bytearray(raw)
        damaged[position] ^= 0x40
        log.path.write_bytes(bytes(damaged))
        with pytest.raises(CorruptLog, match=f"offset {start}"):
            list(log.scan())


def test_a_rotted_last_record_is_not_mistaken_for_a_torn_append(log):
    spans = fill(log, chain(3))
    raw = bytearray(log.path.read_bytes())
    raw[spans[-1][0] + HEADER_SIZE + 5] ^= 0x01
    log.path.write_bytes(bytes(raw))
    with pytest.raises(CorruptLog, match=f"offset {spans[-1][0]}"):
        list(log.scan())


def test_a_failed_append_leaves_no_torn_frame(log, monkeypatch):
    import imstore.log as log_module

    spans = fill(log, chain(1))

    def failing_fsync(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(log_module, "fsync_fd", failing_fsync)
    with pytest.raises(Unavailable, match="Input/output"):
        log.append(chain(2)[1], spans[-1][1])
    monkeypatch.undo()
    assert log.size() == spans[-1][1]


# ------------------------------------------------------------------ hostile payload bytes
def _hostile_payloads() -> list[bytes]:
    good = payload()
    fields = msgpack.unpackb(good, raw=False)
    wrong_types = []
    bad_fields = [
        ("seq", "1"), ("seq", True), ("version", 1.5), ("key", b"k"), ("prev", b"short"), ("op", "mutate"), ("hash", b"x"), ("meta", [1])
    ]
    for name, bad in bad_fields:
        wrong_types.append(msgpack.packb({**fields, name: bad}, use_bin_type=True))
    missing = {k: v for k, v in fields.items() if k != "seq"}
    deep = b"\x91" * 100_000 + b"\xc0"
    deep_map = b"\x81\xa1k" * 50_000 + b"\xc0"
    return [
        b"",
        good[: len(good) // 2],
        good[:-1],
        msgpack.packb(missing, use_bin_type=True),
        *wrong_types,
        b"\xdb\xff\xff\xff\xff" + b"a" * 10,  # str claiming 4 GiB
        b"\xc6\xff\xff\xff\xff" + b"a" * 10,  # bin claiming 4 GiB
        b"\xdd\xff\xff\xff\xff",  # array claiming 4 billion items
        b"\xdf\xff\xff\xff\xff",  # map claiming 4 billion entries
        b"\x81\xdb\xff\xff\xff\xff",  # map whose key claims 4 GiB
        deep,
        deep_map,
        b"\x91" + deep,
        msgpack.packb([b"not a record"], use_bin_type=True),
        msgpack.packb([], use_bin_type=True),
        msgpack.packb([1, 2], use_bin_type=True),
        b"\xc7\x01\x05x",  # ext type
        b"\x81\x01\x02",  # int map key
        b"\xc1",  # never-used byte
        b"\x80",
    ]


@pytest.mark.parametrize("bad", _hostile_payloads(), ids=lambda b: b[:6].hex() or "empty")
def test_hostile_payloads_raise_only_corrupt_log(bad):
    with pytest.raises(CorruptLog):
        decode_payload(bad)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400))
def test_arbitrary_payload_bytes_raise_only_corrupt_log(data):
    try:
        decode_payload(data)
    except CorruptLog:
        pass


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_arbitrary_mutations_of_a_good_payload_raise_only_corrupt_log(data):
    good = bytearray(payload(meta={"a": "b"}, message="hello"))
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(good) - 1))
        good[position] = data.draw(st.integers(0, 255))
    try:
        decode_payload(bytes(good))
    except CorruptLog:
        pass


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(junk=st.binary(max_size=300))
def test_scanning_a_log_of_junk_raises_only_corrupt_log(tmp_path_factory, junk):
    directory = tmp_path_factory.mktemp("junklog")
    log = Log(directory)
    log.path.write_bytes(junk)
    try:
        list(log.scan())
    except CorruptLog:
        pass


def test_frames_claiming_huge_lengths_are_torn_not_allocated(log):
    spans = fill(log, chain(1))
    with log.path.open("ab") as handle:
        handle.write(struct.pack(">I16s", 0xFFFFFFFF, b"\x01" * 16) + b"abc")
    assert len(list(log.scan())) == 1 and log.torn_at == spans[0][1]
    assert log.read_frame_at(spans[0][1]) is None


@pytest.mark.parametrize("position", [0, 1, 2, 3])
def test_a_rotted_length_field_of_the_last_frame_is_not_a_torn_tail(log, position):
    spans = fill(log, chain(2))
    raw = bytearray(log.path.read_bytes())
    raw[spans[-1][0] + position] ^= 0x01
    log.path.write_bytes(bytes(raw))
    with pytest.raises(CorruptLog, match=f"offset {spans[-1][0]}"):
        list(log.scan())
