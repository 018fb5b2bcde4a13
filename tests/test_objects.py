"""The object directory: content addressing, dedup, verified reads, temp files."""

from __future__ import annotations

import os
import stat
import time

import pytest

from imstore.errors import AmbiguousPrefix, CorruptObject, InvalidHash, InvalidInput, ObjectNotFound, Unavailable
from imstore.hashing import hash_bytes
from imstore.objects import TEMP_PREFIX, ObjectStore


@pytest.fixture
def objects(tmp_path):
    root = tmp_path / "objects"
    root.mkdir()
    return ObjectStore(root)


def test_write_names_the_object_by_its_blake3_and_makes_it_read_only(objects):
    object_id, size = objects.write_bytes(b"hello")
    assert object_id == hash_bytes(b"hello") and size == 5
    path = objects.loose_path(object_id)
    assert path == objects.root / object_id[:2] / object_id[2:]
    assert path.read_bytes() == b"hello"
    assert stat.S_IMODE(path.stat().st_mode) == 0o444
    assert objects.read(object_id) == b"hello"


def test_streamed_chunks_hash_like_the_whole(objects):
    data = os.urandom(3 << 20)
    object_id, size = objects.write_stream(data[i : i + 100_000] for i in range(0, len(data), 100_000))
    assert (object_id, size) == (hash_bytes(data), len(data))
    assert b"".join(objects.open(object_id).chunks()) == data


def test_identical_content_is_stored_once_and_no_temp_is_left(objects):
    first = objects.write_bytes(b"same")
    second = objects.write_bytes(b"same")
    assert first == second
    assert list(objects.iter_ids()) == [first[0]]
    assert objects.temp_files() == []


def test_empty_object(objects):
    object_id, size = objects.write_bytes(b"")
    assert size == 0 and objects.read(object_id) == b""


def test_max_size_refuses_and_leaves_nothing(objects):
    with pytest.raises(InvalidInput):
        objects.write_stream(iter([b"x" * 10, b"y" * 10]), max_size=15)
    assert list(objects.iter_ids()) == [] and objects.temp_files() == []


def test_a_failing_source_leaves_no_temp(objects):
    def chunks():
        yield b"partial"
        raise RuntimeError("source broke")

    with pytest.raises(RuntimeError):
        objects.write_stream(chunks())
    assert objects.temp_files() == [] and list(objects.iter_ids()) == []


@pytest.mark.parametrize("damage", ["flip", "truncate", "extend"])
def test_damaged_object_is_never_returned(objects, damage):
    object_id, _ = objects.write_bytes(b"precious bytes" * 100)
    path = objects.loose_path(object_id)
    raw = bytearray(path.read_bytes())
    if damage == "flip":
        raw[len(raw) // 2] ^= 0x01
    elif damage == "truncate":
        raw = raw[:-1]
    else:
        raw += b"!"
    os.chmod(path, 0o644)
    path.write_bytes(bytes(raw))
    reader = objects.open(object_id)
    with pytest.raises(CorruptObject, match=object_id):
        reader.read()
    with pytest.raises(CorruptObject):
        reader.verify()
    with pytest.raises(CorruptObject):
        list(reader.chunks())


def test_dedup_hit_repairs_a_damaged_existing_copy(objects):
    object_id, _ = objects.write_bytes(b"original")
    path = objects.loose_path(object_id)
    os.chmod(path, 0o644)
    path.write_bytes(b"rotten!!")
    objects.write_bytes(b"original")
    assert objects.read(object_id) == b"original"


def test_missing_object_is_not_found(objects):
    with pytest.raises(ObjectNotFound):
        objects.open(hash_bytes(b"never stored"))


def test_missing_objects_directory_is_unavailable_and_never_recreated(objects):
    objects.root.rmdir()
    with pytest.raises(Unavailable):
        objects.write_bytes(b"x")
    with pytest.raises(Unavailable):
        objects.open(hash_bytes(b"x"))
    assert not objects.root.exists()


@pytest.mark.parametrize("bad", ["../../etc/passwd", "A" * 64, "abc"])
def test_ids_are_checked_before_they_become_paths(objects, bad):
    with pytest.raises(InvalidHash):
        objects.loose_path(bad)


def test_resolve_prefix(objects):
    ids = [objects.write_bytes(str(i).encode())[0] for i in range(40)]
    target = ids[0]
    assert objects.resolve_prefix(target[:8].upper()) == target
    assert objects.resolve_prefix(target) == target
    with pytest.raises(ObjectNotFound):
        objects.resolve_prefix("f" * 63 + "e" if target != "f" * 63 + "e" else "0" * 64)
    with pytest.raises(InvalidHash):
        objects.resolve_prefix(target[:7])


def test_ambiguous_prefix(objects):
    # Plant two names sharing 8 digits (they need not be real objects for prefix lookup).
    shard = objects.root / "ab"
    shard.mkdir()
    (shard / ("cdef01" + "0" * 56)).write_bytes(b"")
    (shard / ("cdef01" + "1" * 56)).write_bytes(b"")
    with pytest.raises(AmbiguousPrefix):
        objects.resolve_prefix("abcdef01")


def test_temp_files_are_listed_and_only_stale_ones_removed(objects):
    fresh = objects.root / f"{TEMP_PREFIX}fresh"
    stale = objects.root / f"{TEMP_PREFIX}stale"
    fresh.write_bytes(b"f")
    stale.write_bytes(b"s")
    old = time.time() - 2 * 3600
    os.utime(stale, (old, old))
    assert objects.temp_files() == sorted([fresh, stale])
    assert objects.remove_stale_temps() == 1
    assert objects.temp_files() == [fresh]
    assert list(objects.iter_ids()) == []


def test_packs_hook_is_consulted_after_loose_objects(objects, tmp_path):
    from imstore.objects import ObjectLocation

    data = b"packed bytes"
    object_id = hash_bytes(data)
    pack = tmp_path / "pack"
    pack.write_bytes(b"HEADER" + data + b"TRAILER")

    class Packs:
        def locate(self, wanted):
            return ObjectLocation(pack, 6, len(data)) if wanted == object_id else None

        def ids(self):
            return [object_id]

        def ids_with_prefix(self, prefix):
            return [object_id] if object_id.startswith(prefix) else []

    objects.packs = Packs()
    assert objects.read(object_id) == data
    assert objects.resolve_prefix(object_id[:10]) == object_id
    assert list(objects.iter_ids()) == [object_id]


# ------------------------------------------------------------------ big objects: verify through a memory map
def test_verify_of_a_big_object_maps_it_window_by_window_and_finds_any_bad_byte(tmp_path, monkeypatch):
    import imstore.objects as objects_module
    from imstore.objects import ObjectLocation, ObjectReader

    monkeypatch.setattr(objects_module, "MAPPED_VERIFY", 1)  # small stand-ins for 16 MiB: the same code paths
    monkeypatch.setattr(objects_module, "MAPPED_WINDOW", 64 << 10)
    mapped = []
    real = ObjectReader._verify_mapped
    monkeypatch.setattr(ObjectReader, "_verify_mapped", lambda self: mapped.append(real(self)) or mapped[-1])
    data = os.urandom(300_000)
    path = tmp_path / "pack"
    path.write_bytes(b"h" * 5000 + data + b"tail")  # an unaligned slice, as in a pack
    ObjectReader(hash_bytes(data), ObjectLocation(path, 5000, len(data))).verify()
    assert mapped == [True]
    for position in (0, 70_000, 140_000, len(data) - 1):  # the first byte, inside later windows, the last byte
        damaged = bytearray(data)
        damaged[position] ^= 1
        path.write_bytes(b"h" * 5000 + bytes(damaged) + b"tail")
        with pytest.raises(CorruptObject):
            ObjectReader(hash_bytes(data), ObjectLocation(path, 5000, len(data))).verify()
    path.write_bytes(b"h" * 5000 + data[:1000])  # cut short: not mapped; the chunked read reports it
    with pytest.raises(CorruptObject):
        ObjectReader(hash_bytes(data), ObjectLocation(path, 5000, len(data))).verify()
    assert mapped[-1] is False
