"""The declared contracts hold: local backends keep backend.py's signatures and behaviour,
and Store and RemoteStore both offer everything StoreAPI declares.

`runtime_checkable` would only check that the names exist; these tests compare
each method's parameters (names, kinds, which have defaults) with the protocol's.
"""

from __future__ import annotations

import inspect
import os

import pytest

from imstore import backend
from imstore.errors import CorruptLog, InvalidInput, ObjectNotFound
from imstore.hashing import hash_bytes
from imstore.log import Log
from imstore.model import StoreAPI
from imstore.objects import ObjectStore
from imstore.packs import PackSet
from imstore.records import Chain, decode_payload, frame_bytes
from imstore.server.client import RemoteStore
from imstore.store import Store


def protocol_methods(protocol: type) -> dict[str, inspect.Signature]:
    return {
        name: inspect.signature(member)
        for name, member in vars(protocol).items()
        if callable(member) and not name.startswith("_") or name == "__iter__"
    }


def shape(signature: inspect.Signature) -> list[tuple[str, object, bool]]:
    return [(p.name, p.kind, p.default is not inspect.Parameter.empty) for p in signature.parameters.values() if p.name != "self"]


def mismatches(implementation: type, protocol: type) -> list[str]:
    found = []
    for name, wanted in protocol_methods(protocol).items():
        member = getattr(implementation, name, None)
        if member is None:
            found.append(f"{implementation.__name__} has no {name}")
            continue
        got = shape(inspect.signature(member))
        if got != shape(wanted):
            found.append(f"{implementation.__name__}.{name}{inspect.signature(member)} differs from {protocol.__name__}: {wanted}")
    for name in getattr(protocol, "__annotations__", {}):
        if not name.startswith("_") and name not in dir(implementation) and name not in _instance_attributes(implementation):
            found.append(f"{implementation.__name__} has no attribute {name}")
    return found


def _instance_attributes(implementation: type) -> set[str]:
    source = inspect.getsource(implementation.__init__)
    return {line.split("self.", 1)[1].split(" ", 1)[0].split(":", 1)[0] for line in source.splitlines() if "self." in line and "=" in line}


@pytest.mark.parametrize(
    ("implementation", "protocol"),
    [(ObjectStore, backend.ObjectBackend), (Log, backend.LogBackend), (Store, StoreAPI), (RemoteStore, StoreAPI)],
    ids=["ObjectStore", "Log", "Store", "RemoteStore"],
)
def test_implementation_keeps_the_protocols_signatures(implementation, protocol):
    assert mismatches(implementation, protocol) == []


def test_the_signature_check_can_fail():
    class Incomplete:
        def open(self, object_id, extra): ...

    assert any("has no exists" in problem for problem in mismatches(Incomplete, backend.ObjectBackend))
    assert any("Incomplete.open" in problem for problem in mismatches(Incomplete, backend.ObjectBackend))


def test_object_readers_keep_the_reader_contract():
    from imstore.cache import CachedObjectReader
    from imstore.objects import ObjectReader

    for reader in (ObjectReader, CachedObjectReader):
        assert [problem for problem in mismatches(reader, backend.ObjectReader) if "attribute" not in problem] == []


# ---------------------------------------------------------------- behaviour, run against every object backend
@pytest.fixture(params=["local"])
def objects(request, tmp_path) -> ObjectStore:
    root = tmp_path / "objects"
    (root / "pack").mkdir(parents=True)
    store = ObjectStore(root, packs=PackSet(root / "pack"))
    yield store
    store.packs.close()


def test_an_object_is_named_by_its_hash_and_reads_back_verified(objects):
    object_id, size = objects.write_stream([b"hello ", b"world"])
    assert (object_id, size) == (hash_bytes(b"hello world"), 11)
    assert objects.exists(object_id) and objects.open(object_id).read() == b"hello world"
    assert b"".join(objects.open(object_id).chunks(4)) == b"hello world"


def test_writing_the_same_bytes_again_is_a_dedup_hit(objects):
    first = objects.add_stream([b"same"])
    second = objects.add_stream([b"same"])
    assert first[2] is True and second[2] is False and first[:2] == second[:2]
    assert list(objects.iter_ids()) == [first[0]]


def test_a_write_over_max_size_leaves_nothing(objects):
    with pytest.raises(InvalidInput):
        objects.write_stream([b"x" * 10, b"y" * 10], max_size=15)
    assert list(objects.iter_ids()) == [] and objects.check() == ([], [])


def test_missing_objects_and_prefixes(objects):
    with pytest.raises(ObjectNotFound):
        objects.open(hash_bytes(b"never"))
    ids = [objects.write_bytes(str(number).encode())[0] for number in range(40)]
    assert objects.resolve_prefix(ids[0][:12]) == ids[0]
    missing = next(prefix for prefix in (f"{number:08x}" for number in range(1000)) if not any(i.startswith(prefix) for i in ids))
    with pytest.raises(ObjectNotFound):
        objects.resolve_prefix(missing)


def test_a_pack_is_invisible_until_finished_then_durable_and_readable(objects):
    pack = objects.new_pack()
    object_id = hash_bytes(b"packed")
    pack.add(object_id, b"packed")
    assert object_id in pack and not objects.exists(object_id)
    pack.finish()
    objects.refresh()
    assert objects.exists(object_id) and objects.open(object_id).read() == b"packed"
    assert objects.open(object_id).local_file() is not None


# ---------------------------------------------------------------- behaviour, run against every log backend
@pytest.fixture(params=["local"])
def log(request, tmp_path) -> Log:
    directory = tmp_path / "log"
    directory.mkdir()
    return Log(directory)


def chain_payload(chain: Chain, key: str) -> bytes:
    chain.add(op="put", key=key, version=1, hash=hash_bytes(key.encode()), size=len(key))
    return chain.payload()


def test_append_is_compare_and_append(log):
    chain = Chain(0, b"\0" * 32)
    first = chain_payload(chain, "a")
    assert log.append(first, 0) == (0, len(frame_bytes(first)))
    with pytest.raises(CorruptLog):
        log.append(chain_payload(Chain(1, chain.prev), "b"), 0)  # the caller thinks the log is empty: refused
    assert log.end() == len(frame_bytes(first))


def test_scan_raw_and_frame_end_agree(log):
    chain = Chain(0, b"\0" * 32)
    ends = []
    for key in ("a", "b", "c"):
        payload = chain_payload(Chain(chain.seq, chain.prev), key)
        chain.seq, chain.prev = decode_payload(payload)[0].seq, decode_payload(payload)[0].record_hash
        ends.append(log.append(payload, log.end())[1])
    frames = list(log.scan())
    assert [frame.end for frame in frames] == ends
    assert log.frame_end_at(frames[1].offset) == (frames[1].end, frames[1].checksum)
    assert log.raw(0, 1 << 20) == log.path.read_bytes()
    assert log.raw(frames[1].offset, 1) == log.path.read_bytes()[frames[1].offset : frames[1].end]  # at least one whole frame


def test_a_torn_tail_is_reported_on_the_scan_and_cut_by_repair(log):
    payload = chain_payload(Chain(0, b"\0" * 32), "a")
    end = log.append(payload, 0)[1]
    with open(log.path, "ab") as handle:
        handle.write(frame_bytes(payload)[:7])
    scan = log.scan()
    assert len(list(scan)) == 1 and scan.torn_at == end
    assert log.raw(0, 1 << 20) == log.path.read_bytes()[:end]  # never ships torn bytes
    with log.locked():
        log.repair_tail(scan.torn_at)
    assert os.path.getsize(log.path) == end


def test_two_scans_of_one_log_keep_their_own_answers(log):
    payload = chain_payload(Chain(0, b"\0" * 32), "a")
    end = log.append(payload, 0)[1]
    clean = log.scan()
    list(clean)
    with open(log.path, "ab") as handle:
        handle.write(b"\0\0")
    torn = log.scan()
    list(torn)
    assert clean.torn_at is None and torn.torn_at == end
