"""Store semantics from DESIGN "Precise behaviour": versions, tombstones, preconditions, recovery."""

from __future__ import annotations

import io
import os
import shutil
import time
from pathlib import Path

import pytest

from imstore import Store
from imstore.errors import (
    CorruptLog,
    CorruptObject,
    InvalidInput,
    InvalidKey,
    InvalidVersion,
    KeyDeleted,
    KeyNotFound,
    NoStore,
    PreconditionFailed,
    Unavailable,
    VersionNotFound,
)
from imstore.hashing import hash_bytes
from imstore.objects import TEMP_PREFIX


def reopen(store: Store) -> Store:
    store.close()
    return Store.open(store.root)


# ------------------------------------------------------------------ lifecycle
def test_init_creates_the_layout_and_is_idempotent(tmp_path):
    store, created = Store.init(tmp_path / "s")
    assert created
    assert {p.name for p in store.root.iterdir()} >= {"config", "objects", "log"}
    store.close()
    again, created_again = Store.init(tmp_path / "s")
    assert not created_again and again.store_id == store.store_id
    again.close()


def test_init_refuses_a_non_empty_non_store_directory(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "file").write_text("mine")
    with pytest.raises(InvalidInput, match="non-empty"):
        Store.init(tmp_path / "d")
    assert [p.name for p in (tmp_path / "d").iterdir()] == ["file"]


def test_open_without_a_store_is_no_store(tmp_path):
    with pytest.raises(NoStore, match="imstore init"):
        Store.open(tmp_path / "nothing")
    assert not (tmp_path / "nothing").exists()


def test_open_with_create_makes_the_default_store(tmp_path):
    with Store.open(tmp_path / "fresh", create=True) as store:
        store.put("k", b"v")
    with Store.open(tmp_path / "fresh") as store:
        assert store.get("k") == b"v"


@pytest.mark.parametrize("part", ["objects", "log"])
def test_missing_store_directories_are_unavailable_and_never_recreated(store, part):
    store.put("k", b"v")
    store = reopen(store)
    shutil.rmtree(store.root / part)
    with pytest.raises(Unavailable):
        store.put("k", b"other")
    assert not (store.root / part).exists()
    store.close()


# ------------------------------------------------------------------ put / get / history
def test_versions_are_gap_free_per_key(store):
    assert [store.put("a", bytes([i])).version.version for i in range(5)] == [1, 2, 3, 4, 5]
    assert store.put("b", b"x").version.version == 1
    assert [v.version for v in store.history("a")] == [1, 2, 3, 4, 5]
    assert [v.seq for v in store.log_records()] == [1, 2, 3, 4, 5, 6]


def test_put_returns_the_version_and_get_reads_every_version(store):
    result = store.put("k", b"one", content_type="text/plain", meta={"a": "b"}, message="first")
    version = result.version
    assert (version.key, version.version, version.hash, version.size, result.unchanged) == ("k", 1, hash_bytes(b"one"), 3, False)
    assert (version.content_type, version.meta, version.message) == ("text/plain", {"a": "b"}, "first")
    store.put("k", b"two")
    assert store.get("k") == b"two"
    assert store.get("k", version=1) == b"one" and store.get("k", version="2") == b"two"
    assert store.resolve("k").version == 2


def test_put_stream_from_a_file_object(store):
    data = os.urandom(3 << 20)
    result = store.put_stream("big", io.BytesIO(data))
    assert result.version.size == len(data) and store.get("big") == data


def test_unchanged_put_adds_no_version(store):
    store.put("k", b"same", content_type="a/b", meta={"x": "1"})
    again = store.put("k", b"same", content_type="a/b", meta={"x": "1"})
    assert again.unchanged and again.version.version == 1
    assert len(store.log_records()) == 1


@pytest.mark.parametrize("change", [dict(content_type="c/d"), dict(meta={"x": "2"}), dict(content_type=None, meta={})])
def test_a_different_type_or_meta_is_a_new_version(store, change):
    store.put("k", b"same", content_type="a/b", meta={"x": "1"})
    result = store.put("k", b"same", **change)
    assert not result.unchanged and result.version.version == 2


def test_identical_bytes_under_two_keys_share_one_object(store):
    store.put("a", b"shared")
    store.put("b", b"shared")
    assert list(store.objects.iter_ids()) == [hash_bytes(b"shared")]


def test_empty_content_is_valid(store):
    assert store.put("empty", b"").version.size == 0
    assert store.get("empty") == b""


def test_get_missing_key_and_missing_version(store):
    with pytest.raises(KeyNotFound):
        store.get("nope")
    store.put("k", b"v")
    with pytest.raises(VersionNotFound, match="latest is 1"):
        store.get("k", version=2)
    with pytest.raises(InvalidVersion):
        store.get("k", version="-1")
    with pytest.raises(KeyNotFound):
        store.history("nope")


@pytest.mark.parametrize("key", ["", " ", "a\x00b", "a\tb", "\udc80", "x" * 1025])
def test_invalid_keys_write_nothing(store, key):
    with pytest.raises(InvalidKey):
        store.put(key, b"v")
    assert store.log.size() == 0 and list(store.objects.iter_ids()) == []


def test_keys_are_never_paths(store, tmp_path):
    for key in ["../x", "../../escape", "/etc/passwd", "%2e%2e%2f", "\uff0e\uff0e\uff0fx", "a/../../b"]:
        store.put(key, key.encode())
        assert store.get(key) == key.encode()
    outside = {p.name for p in tmp_path.iterdir()}
    assert outside == {"store"}


# ------------------------------------------------------------------ tombstones
def test_rm_appends_a_tombstone_and_old_versions_stay_readable(store):
    store.put("k", b"v1")
    tombstone = store.delete("k", message="bye")
    assert tombstone.version == 2 and tombstone.deleted and tombstone.hash is None
    with pytest.raises(KeyDeleted):
        store.get("k")
    assert store.get("k", version=1) == b"v1"
    with pytest.raises(KeyDeleted):
        store.get("k", version=2)
    assert [(v.version, v.op) for v in store.history("k")] == [(1, "put"), (2, "delete")]
    assert store.ls() == [] and [v.key for v in store.ls(include_deleted=True)] == ["k"]


def test_put_after_a_tombstone_is_a_new_version_even_with_equal_bytes(store):
    store.put("k", b"v")
    store.delete("k")
    result = store.put("k", b"v")
    assert not result.unchanged and result.version.version == 3
    assert store.get("k") == b"v"


def test_rm_of_a_missing_or_deleted_key_appends_nothing(store):
    with pytest.raises(KeyNotFound):
        store.delete("never")
    store.put("k", b"v")
    store.delete("k")
    size = store.log.size()
    with pytest.raises(KeyDeleted):
        store.delete("k")
    assert store.log.size() == size


# ------------------------------------------------------------------ preconditions
def test_if_absent_holds_for_no_versions_or_a_tombstone(store):
    assert store.put("k", b"1", if_absent=True).version.version == 1
    with pytest.raises(PreconditionFailed):
        store.put("k", b"2", if_absent=True)
    store.delete("k")
    assert store.put("k", b"3", if_absent=True).version.version == 3


def test_if_version_compares_with_the_latest_tombstones_included(store):
    store.put("k", b"1")
    with pytest.raises(PreconditionFailed, match="version 1, not 2"):
        store.put("k", b"2", if_version=2)
    assert store.put("k", b"2", if_version=1).version.version == 2
    store.delete("k")
    with pytest.raises(PreconditionFailed):
        store.put("k", b"3", if_version=2)
    assert store.put("k", b"3", if_version=3).version.version == 4
    with pytest.raises(PreconditionFailed):
        store.delete("k", if_version=3)
    assert len(store.log_records()) == 4


def test_if_version_zero_means_no_versions_yet(store):
    assert store.put("k", b"1", if_version=0).version.version == 1
    with pytest.raises(PreconditionFailed):
        store.put("k", b"2", if_version=0)


def test_a_failed_precondition_appends_nothing(store):
    store.put("k", b"1")
    size = store.log.size()
    with pytest.raises(PreconditionFailed):
        store.put("k", b"new bytes", if_absent=True)
    assert store.log.size() == size and store.get("k") == b"1"


# ------------------------------------------------------------------ --at
def test_at_returns_the_version_current_at_an_instant(store):
    first = store.put("k", b"1").version
    second = store.put("k", b"2").version
    tombstone = store.delete("k")
    assert store.get("k", at=first.time_ns) == b"1"
    assert store.get("k", at=second.time_ns - 1) == b"1"
    assert store.get("k", at=second.time_ns) == b"2"
    with pytest.raises(KeyDeleted):
        store.get("k", at=tombstone.time_ns + 10**9)
    with pytest.raises(VersionNotFound):
        store.get("k", at=first.time_ns - 1)
    with pytest.raises(KeyNotFound):
        store.get("other", at=first.time_ns)


# ------------------------------------------------------------------ ls / log
def test_ls_and_log(store):
    store.put("a/1", b"x")
    store.put("a/2", b"y")
    store.put("b", b"z")
    store.delete("a/2")
    assert [(v.key, v.version) for v in store.ls()] == [("a/1", 1), ("b", 1)]
    assert [v.key for v in store.ls("a/", include_deleted=True)] == ["a/1", "a/2"]
    assert [(v.seq, v.op) for v in store.log_records(after=2)] == [(3, "put"), (4, "delete")]
    assert len(store.log_records(limit=2)) == 2


# ------------------------------------------------------------------ verify / reindex
def test_verify_is_clean_and_counts(store):
    store.put("a", b"x")
    store.put("b", b"yy")
    store.delete("a")
    report = store.verify()
    assert report.ok, report.problems
    assert (report.records, report.keys, report.objects, report.bytes) == (3, 2, 2, 3)


def test_verify_names_a_damaged_object(store):
    store.put("a", b"good")
    bad = store.put("b", b"will rot").version.hash
    path = store.objects.loose_path(bad)
    os.chmod(path, 0o644)
    path.write_bytes(b"rotten!!")
    report = store.verify()
    assert not report.ok and len(report.problems) == 1 and bad in report.problems[0]
    with pytest.raises(CorruptObject):
        store.get("b")


def test_verify_notes_temps_and_unreferenced_objects_without_failing(store):
    store.put("a", b"x")
    store.objects.write_bytes(b"orphan")
    (store.objects.root / f"{TEMP_PREFIX}left").write_bytes(b"t")
    report = store.verify()
    assert report.ok and len(report.notes) == 2


def test_reindex_rebuilds_from_the_log(store):
    for i in range(5):
        store.put(f"k{i % 2}", bytes([i]))
    assert store.reindex() == 5
    assert store.get("k0") == bytes([4]) and store.verify().ok


def _puts(store: Store, start: int, stop: int) -> None:
    for i in range(start, stop):
        store.put(f"k{i % 3}", f"v{i}".encode())


def _assert_matches(store: Store, expected: list[tuple]) -> None:
    assert [(v.seq, v.key, v.version, v.hash) for v in store.log_records()] == expected
    assert store.verify().ok


def test_index_is_rebuilt_when_missing(store):
    _puts(store, 0, 6)
    expected = [(v.seq, v.key, v.version, v.hash) for v in store.log_records()]
    store.close()
    for suffix in ("", "-wal", "-shm"):
        path = store.root / f"index.sqlite{suffix}"
        if path.exists():
            path.unlink()
    with Store.open(store.root) as reopened:
        _assert_matches(reopened, expected)


def test_index_is_rebuilt_when_garbage(store):
    _puts(store, 0, 6)
    expected = [(v.seq, v.key, v.version, v.hash) for v in store.log_records()]
    store.close()
    for suffix in ("-wal", "-shm"):
        path = store.root / f"index.sqlite{suffix}"
        if path.exists():
            path.unlink()
    (store.root / "index.sqlite").write_bytes(b"\x00garbage" * 1000)
    with Store.open(store.root) as reopened:
        _assert_matches(reopened, expected)
        assert any("rebuild" in warning for warning in reopened.warnings)


def _snapshot_index(root, into):
    into.mkdir()
    for path in root.glob("index.sqlite*"):
        shutil.copy2(path, into / path.name)


def _restore_index(root, snapshot):
    for path in root.glob("index.sqlite*"):
        path.unlink()
    for path in snapshot.iterdir():
        shutil.copy2(path, root / path.name)


def test_index_catches_up_when_behind_the_log(store, tmp_path):
    _puts(store, 0, 3)
    store.close()
    _snapshot_index(store.root, tmp_path / "old-index")
    with Store.open(store.root) as again:
        _puts(again, 3, 8)
        expected = [(v.seq, v.key, v.version, v.hash) for v in again.log_records()]
    _restore_index(store.root, tmp_path / "old-index")
    with Store.open(store.root) as reopened:
        _assert_matches(reopened, expected)
        assert reopened.put("k0", b"next").version.version == 4


def test_a_log_shorter_than_the_index_knew_is_damage_until_an_explicit_reindex(store, tmp_path):
    """HARDENING D6: the index knew more than the log holds: exit 5, nothing cut or rebuilt, until reindex."""
    _puts(store, 0, 3)
    store.close()
    old_log = (store.root / "log" / "00000000000000000000.log").read_bytes()
    with Store.open(store.root) as again:
        expected = [(v.seq, v.key, v.version, v.hash) for v in again.log_records()]
        _puts(again, 3, 8)
        assert len(again.log_records()) == 8
    # The log goes back to an older copy (restored from a backup, or cut): the index shows it held more.
    (store.root / "log" / "00000000000000000000.log").write_bytes(old_log)
    index_before = (store.root / "index.sqlite").read_bytes()
    with Store.open(store.root) as reopened:
        with pytest.raises(CorruptLog, match="reindex"):
            reopened.get("k0")
        with pytest.raises(CorruptLog, match="reindex"):
            reopened.put("k0", b"after")
        assert not reopened.verify().ok
    assert (store.root / "log" / "00000000000000000000.log").read_bytes() == old_log
    assert (store.root / "index.sqlite").read_bytes() == index_before
    with Store.open(store.root) as reopened:
        assert reopened.reindex() == 3  # the operator accepts what the log holds
    with Store.open(store.root) as reopened:
        _assert_matches(reopened, expected)
        assert reopened.put("k0", b"after").version.version == 2


def test_a_log_replaced_by_one_of_the_same_length_is_damage_until_an_explicit_reindex(store, tmp_path):
    _puts(store, 0, 3)
    store.close()
    log_path = store.root / "log" / "00000000000000000000.log"
    original = log_path.read_bytes()
    other = tmp_path / "other"
    with Store.init(other)[0] as foreign:
        for i in range(3):
            foreign.put(f"k{i % 3}", f"w{i}".encode())  # same sizes, different bytes
        expected = [(v.seq, v.key, v.version, v.hash) for v in foreign.log_records()]
        for object_id in foreign.objects.iter_ids():
            target = store.objects.loose_path(object_id)
            target.parent.mkdir(exist_ok=True)
            shutil.copy2(foreign.objects.loose_path(object_id), target)
    replacement = (other / "log" / "00000000000000000000.log").read_bytes()
    assert len(replacement) == len(original) and replacement != original
    log_path.write_bytes(replacement)
    with Store.open(store.root) as reopened:
        with pytest.raises(CorruptLog, match="holds other bytes"):
            reopened.log_records()
        reopened.reindex()
    with Store.open(store.root) as reopened:
        assert [(v.seq, v.key, v.version, v.hash) for v in reopened.log_records()] == expected


# ------------------------------------------------------------------ torn tail and temps
def test_a_reader_leaves_a_torn_tail_and_a_writer_cuts_it_with_a_warning(store):
    store.put("k", b"1")
    store.put("k", b"2")
    size = store.log.size()
    store.close()
    with (store.root / "log" / "00000000000000000000.log").open("ab") as handle:
        handle.write(b"\x00\x00\x01\x00partial")
    with Store.open(store.root) as reader:
        assert reader.get("k") == b"2"
        report = reader.verify()
        assert report.ok and report.warnings
        assert reader.log.size() == size + 11
    with Store.open(store.root) as writer:
        assert writer.put("k", b"3").version.version == 3
        assert any("torn" in warning for warning in writer.warnings)
        assert writer.get("k", version=1) == b"1"
        assert writer.verify().ok and not writer.verify().warnings


def test_a_writer_removes_stale_temp_files_but_not_fresh_ones(store):
    stale = store.objects.root / f"{TEMP_PREFIX}stale"
    fresh = store.objects.root / f"{TEMP_PREFIX}fresh"
    stale.write_bytes(b"old")
    fresh.write_bytes(b"new")
    old = time.time() - 7200
    os.utime(stale, (old, old))
    store.put("k", b"v")
    assert not stale.exists() and fresh.exists()


def test_a_failed_precondition_writes_no_object_either(store):
    store.put("k", b"1")
    with pytest.raises(PreconditionFailed):
        store.put("k", b"never stored", if_version=5)
    with pytest.raises(PreconditionFailed):
        store.put("k", b"never stored", if_absent=True)
    assert hash_bytes(b"never stored") not in set(store.objects.iter_ids())
    assert store.objects.temp_files() == []


def test_preconditions_see_writes_made_by_another_store_instance(store):
    store.put("k", b"1")
    with Store.open(store.root) as other:
        other.put("k", b"2")
    assert store.put("k", b"3", if_version=2).version.version == 3


def test_a_version_can_be_copied_and_pickled_as_it_could_as_a_frozen_dataclass(store):
    import copy
    import pickle

    version = store.put("k", b"x", meta={"a": "1"}, message="m").version
    for clone in (copy.copy(version), copy.deepcopy(version), pickle.loads(pickle.dumps(version))):
        assert clone == version and clone.meta == {"a": "1"} and clone.stale is False
    stale = pickle.loads(pickle.dumps(version.as_stale()))
    assert stale.stale is True


def test_a_long_lived_store_checks_the_log_only_when_it_changed_and_then_sees_a_rewrite(store_path, monkeypatch):
    from imstore.indexer import Indexer

    with Store.open(store_path) as store:
        store.put("k", b"one")
        assert store.get("k") == b"one"
        checks = []
        real_catch_up = Indexer.catch_up
        monkeypatch.setattr(Indexer, "catch_up", lambda self, **options: checks.append(1) or real_catch_up(self, **options))
        for _ in range(5):
            assert store.get("k") == b"one"
        assert checks == []  # the log's stamp did not change: no index query, no pread of its end
        # The only frame's checksum rewritten in place: same size and inode, a later mtime.
        path = store.log.path
        raw = bytearray(path.read_bytes())
        raw[5] ^= 0x01
        status = os.stat(path)
        path.write_bytes(bytes(raw))
        os.utime(path, ns=(status.st_atime_ns, status.st_mtime_ns + 1_000_000_000))
        with pytest.raises(CorruptLog):
            store.get("k")
        assert checks


def test_open_create_when_another_process_finished_the_store_after_our_config_read(tmp_path, monkeypatch):
    # The race behind a flaky first-write test: our read of the config finds nothing, then another
    # process finishes the store and opens it (index.sqlite appears), so the directory no longer looks
    # like a half-made store. The config is there now: open it, not "no store" (exit 10).
    root = tmp_path / "s"
    with Store.open(root, create=True) as other:
        other.put("k", b"v")
    real_read_bytes = Path.read_bytes
    missed = []

    def read_bytes_missing_once(self):
        if self.name == "config" and not missed:
            missed.append(self)
            raise FileNotFoundError(self)
        return real_read_bytes(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes_missing_once)
    with Store.open(root, create=True) as store:
        assert missed and store.get("k") == b"v"


def test_the_lazily_made_committer_is_made_once_when_threads_ask_at_once(tmp_path, monkeypatch):
    import threading

    import imstore.commit

    store = Store.init(tmp_path / "s")[0]
    made = []

    class SlowToMake(imstore.commit.Committer):
        def __init__(self, *args, **kwargs):
            made.append(self)
            time.sleep(0.05)  # widens the window in which an unguarded first use would make a second one
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(imstore.commit, "Committer", SlowToMake)
    start = threading.Barrier(4)
    seen = []

    def first_use():
        start.wait(10)
        seen.append(store.committer)

    threads = [threading.Thread(target=first_use) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(made) == 1 and len(seen) == 4 and all(committer is made[0] for committer in seen)
    store.put("k", b"one writer")
    store.close()
