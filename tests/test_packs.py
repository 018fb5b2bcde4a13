"""Packs: written durably, found by every read path, damage detected and never served."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from imstore import Store
from imstore.errors import CorruptObject
from imstore.hashing import hash_bytes
from imstore.packs import PackIndex, PackSet, PackWriter


def _pack(store: Store, blobs: list[bytes]) -> Path:
    writer = PackWriter(store.root / "objects" / "pack")
    for blob in blobs:
        writer.add(hash_bytes(blob), blob)
    return writer.finish()


def _commit(store: Store, pairs: dict[str, bytes]) -> None:
    from imstore.store import BatchItem

    writer = PackWriter(store.root / "objects" / "pack")
    for data in pairs.values():
        writer.add(hash_bytes(data), data)
    store.import_batch([BatchItem(key, hash_bytes(data), len(data)) for key, data in pairs.items()], pack=writer)


def test_pack_index_finds_every_object_and_nothing_else(store):
    blobs = [os.urandom(size) for size in range(0, 300, 7)]
    path = _pack(store, blobs)
    index = PackIndex(path.with_suffix(".idx"))
    try:
        assert index.count == len(blobs)
        for blob in blobs:
            entry = index.find(hash_bytes(blob))
            assert entry is not None and entry.length == len(blob)
            with open(path, "rb") as handle:
                handle.seek(entry.offset)
                assert handle.read(entry.length) == blob
        assert index.find(hash_bytes(b"not in the pack")) is None
        ids = [entry.object_id for entry in index.entries()]
        assert ids == sorted(ids)
    finally:
        index.close()


def test_a_pack_is_only_visible_once_its_index_is_in_place(store):
    writer = PackWriter(store.root / "objects" / "pack")
    writer.add(hash_bytes(b"abc"), b"abc")
    assert store.objects.locate(hash_bytes(b"abc")) is None
    assert all(name.startswith(".tmp-") for name in os.listdir(store.root / "objects" / "pack"))
    writer.finish()
    assert store.objects.read(hash_bytes(b"abc")) == b"abc"
    assert not [name for name in os.listdir(store.root / "objects" / "pack") if name.startswith(".tmp-")]


def test_an_empty_writer_leaves_nothing_behind(store):
    PackWriter(store.root / "objects" / "pack").finish()
    assert os.listdir(store.root / "objects" / "pack") == []


def test_packed_objects_are_readable_by_get_cat_and_prefix(store):
    _commit(store, {"a": b"alpha", "b": b"beta" * 1000})
    assert store.get("a") == b"alpha"
    assert store.get("b") == b"beta" * 1000
    object_id = hash_bytes(b"alpha")
    assert store.cat(object_id[:9]) == b"alpha"  # odd-length prefix
    assert store.cat(object_id[:8]) == b"alpha"
    assert not list((store.root / "objects").glob("??/*")), "the batch wrote loose objects"
    assert store.verify().ok


def test_packs_written_by_another_process_are_found(store_path):
    with Store.open(store_path) as reader:
        assert reader.ls() == []
        with Store.open(store_path) as writer:
            _commit(writer, {"k": b"from another writer"})
        assert reader.get("k") == b"from another writer"


def test_a_damaged_packed_object_is_never_served_and_verify_names_it(store):
    _commit(store, {"a": b"A" * 100, "b": b"B" * 100})
    pack = next((store.root / "objects" / "pack").glob("*.pack"))
    entry = PackSet(pack.parent).locate(hash_bytes(b"B" * 100))
    os.chmod(pack, 0o644)
    with open(pack, "r+b") as handle:
        handle.seek(entry.offset + 10)
        handle.write(b"X")
    with pytest.raises(CorruptObject):
        store.get("b")
    assert store.get("a") == b"A" * 100
    report = store.verify()
    assert not report.ok
    assert any(hash_bytes(b"B" * 100) in problem for problem in report.problems)
    assert not any(hash_bytes(b"A" * 100) in problem for problem in report.problems)


def test_a_damaged_pack_index_is_never_used_and_verify_reports_it(store):
    _commit(store, {"a": b"alpha"})
    index = next((store.root / "objects" / "pack").glob("*.idx"))
    os.chmod(index, 0o644)
    data = bytearray(index.read_bytes())
    data[60] ^= 0xFF  # inside the first entry's hash
    index.write_bytes(bytes(data))
    with Store.open(store.root) as fresh:
        with pytest.raises(CorruptObject):  # the log says the bytes were stored: missing is damage
            fresh.get("a")
        report = fresh.verify()
    assert any("fails its checksum" in problem for problem in report.problems)
    assert any("missing" in problem for problem in report.problems)


def test_a_truncated_pack_file_is_reported(store):
    _commit(store, {"a": b"alpha" * 50})
    pack = next((store.root / "objects" / "pack").glob("*.pack"))
    os.chmod(pack, 0o644)
    os.truncate(pack, pack.stat().st_size - 40)
    report = store.verify()
    assert any("bytes, its index says" in problem for problem in report.problems)


def test_repack_merges_small_packs_and_keeps_every_object(store):
    contents = {f"k{i}": f"content {i}".encode() * (i + 1) for i in range(6)}
    for key, data in contents.items():
        _commit(store, {key: data})
    pack_dir = store.root / "objects" / "pack"
    assert len(list(pack_dir.glob("*.idx"))) == 6
    result = store.repack()
    assert result.packs_merged == 6 and result.objects == 6 and not result.problems
    assert [path.name for path in pack_dir.glob("*.idx")] == [result.pack.with_suffix(".idx").name]
    with Store.open(store.root) as fresh:
        for key, data in contents.items():
            assert fresh.get(key) == data
        assert fresh.verify().ok
    assert store.repack().pack is None  # one pack: nothing to do


def test_repack_keeps_a_pack_holding_a_damaged_object(store):
    _commit(store, {"good": b"good bytes"})
    _commit(store, {"bad": b"bad bytes!"})
    pack_dir = store.root / "objects" / "pack"
    damaged = next(p for p in pack_dir.glob("*.pack") if PackIndex(p.with_suffix(".idx")).find(hash_bytes(b"bad bytes!")))
    os.chmod(damaged, 0o644)
    with open(damaged, "r+b") as handle:
        handle.seek(9)
        handle.write(b"#")
    result = store.repack()
    assert result.problems and hash_bytes(b"bad bytes!") in result.problems[0]
    assert damaged.exists(), "a pack with a damaged object was deleted"
    assert store.get("good") == b"good bytes"


def test_a_pack_without_an_index_is_a_note_not_a_problem(store):
    path = _pack(store, [b"orphan"])
    path.with_suffix(".idx").unlink()
    report = store.verify()
    assert report.ok
    assert any("has no index" in note for note in report.notes)


def test_a_reader_opened_before_a_repack_still_reads_the_object(store):
    _commit(store, {"a": b"first pack"})
    _commit(store, {"b": b"second pack"})
    reader = store.objects.open(hash_bytes(b"first pack"))
    old_pack = reader.location.path
    store.repack()
    assert not old_pack.exists()
    assert reader.read() == b"first pack"


def test_a_committed_pack_whose_index_was_lost_is_not_deleted_by_the_next_writer(store_path):
    # A lost .idx is damage (F5: a deleted file), not an import cut short: the pack holds the only copy of
    # acknowledged versions, and the records say which objects (hash, size) to look for in it.
    store = Store.open(store_path)
    _commit(store, {"a": b"acknowledged bytes of a", "b": b"acknowledged bytes of b"})
    (pack,) = (store.root / "objects" / "pack").glob("pack-*.pack")
    store.close()
    pack.with_suffix(".idx").unlink()
    hour_ago = time.time() - 3601
    os.utime(pack, (hour_ago, hour_ago))
    with Store.open(store_path) as writer:
        writer.put("other", b"v")  # the first write of a Store clears stale leftovers
    assert pack.exists()


def test_many_packs_hold_no_file_descriptors_open(store):
    """bench_soak: a worker (a PackSet per thread) ran out of descriptors with ~2,500 packs, one mmap each."""
    for number in range(40):
        _commit(store, {f"batch{number}/a": b"a%d" % number, f"batch{number}/b": b"b%d" % number})
    readers = [Store.open(store.root) for _ in range(4)]
    try:
        before = len(os.listdir("/proc/self/fd"))
        for reader in readers:
            assert reader.get("batch0/a") == b"a0" and reader.get("batch39/b") == b"b39"
        assert len(os.listdir("/proc/self/fd")) - before < 4 * 4  # the index databases, not 4 x 40 packs
    finally:
        for reader in readers:
            reader.close()


def test_a_pack_index_that_cannot_be_opened_for_now_is_not_taken_for_damaged(store, monkeypatch):
    import errno

    import imstore.packs as packs_module
    from imstore.errors import Unavailable

    _commit(store, {"packed": b"in a pack"})
    real_init = packs_module.PackIndex.__init__

    def out_of_descriptors(self, path):
        raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))

    with Store.open(store.root) as reader:
        monkeypatch.setattr(packs_module.PackIndex, "__init__", out_of_descriptors)
        with pytest.raises(Unavailable):
            reader.get("packed")
        monkeypatch.setattr(packs_module.PackIndex, "__init__", real_init)
        assert reader.get("packed") == b"in a pack"  # the same Store: not a 404 until it restarts
        assert reader.verify().ok
