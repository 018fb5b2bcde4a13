"""F2: a crash at each step of the write order recovers to exactly the old or the new state."""

from __future__ import annotations

import os
import signal
import time

import pytest
from workload import acks, start_writer

from imstore import Store
from imstore.errors import KeyDeleted, ObjectNotFound
from imstore.fsio import CRASH_ENV
from imstore.hashing import hash_bytes

# Where the write of a put can be cut, and which state a reopen must find (process crash: the page cache survives).
PUT_STEPS = {
    "object-temp-written": "old",
    "object-fsynced": "old",
    "object-linked": "old",
    "log-locked": "old",
    "log-written": "new",
    "log-fsynced": "new",
    "index-updated": "new",
}
DELETE_STEPS = {"log-locked": "old", "log-written": "new", "log-fsynced": "new", "index-updated": "new"}


def crash_at(step: str, *args: str) -> bytes:
    writer = start_writer(*args, env={CRASH_ENV: step})
    output, errors = writer.communicate(timeout=60)
    assert writer.returncode == -signal.SIGKILL, f"did not crash at {step}: {errors.decode()[-2000:]}"
    return output


def age(path, seconds: float = 2 * 3600) -> None:
    old = time.time() - seconds
    os.utime(path, (old, old))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("step, expected", PUT_STEPS.items())
def test_put_crash_recovers_to_old_or_new(store_path, step, expected):
    with Store.open(store_path) as store:
        store.put("k", b"old")
    output = crash_at(step, "once", str(store_path), "k", "new")
    assert acks(output) == [], "a crashed put must not have been acknowledged"
    with Store.open(store_path) as store:
        assert store.get("k") == (b"old" if expected == "old" else b"new")
        assert [v.version for v in store.history("k")] == ([1] if expected == "old" else [1, 2])
        assert store.get("k", version=1) == b"old"
        report = store.verify()
        assert report.ok, report.problems
        temps = store.objects.temp_files()
        if step in ("object-temp-written", "object-fsynced", "object-linked"):
            assert len(temps) == 1, "the crash should have left its temp file behind"
            # A temp file is never served: until it is linked, the object does not exist for readers.
            if step != "object-linked":
                with pytest.raises(ObjectNotFound):
                    store.cat(hash_bytes(b"new"))
            else:
                assert store.cat(hash_bytes(b"new")) == b"new"  # linked only after fsync: complete
        # A later writer removes temp files once they are stale (an hour old), and writes still work.
        for temp in temps:
            age(temp)
        result = store.put("k", b"later")
        assert result.version.version == (2 if expected == "old" else 3)
        assert store.objects.temp_files() == []
        assert store.get("k") == b"later" and store.verify().ok


@pytest.mark.timeout(120)
@pytest.mark.parametrize("step, expected", DELETE_STEPS.items())
def test_delete_crash_recovers_to_old_or_new(store_path, step, expected):
    with Store.open(store_path) as store:
        store.put("k", b"old")
    crash_at(step, "delete", str(store_path), "k")
    with Store.open(store_path) as store:
        if expected == "old":
            assert store.get("k") == b"old"
        else:
            with pytest.raises(KeyDeleted):
                store.get("k")
        assert store.verify().ok
        assert store.put("k", b"again").version.version == (2 if expected == "old" else 3)


@pytest.mark.timeout(120)
def test_crash_with_the_lock_held_does_not_block_the_next_writer(store_path):
    crash_at("log-locked", "once", str(store_path), "k", "new")
    with Store.open(store_path) as store:
        assert store.put("k", b"after").version.version == 1


@pytest.mark.timeout(120)
def test_a_torn_log_write_is_cut_by_the_next_writer(store_path):
    """A crash mid-write() of the frame (the kernel wrote only half of it) is cut back by the next writer."""
    with Store.open(store_path) as store:
        store.put("k", b"old")
    log_path = store_path / "log" / "00000000000000000000.log"
    size = log_path.stat().st_size
    crash_at("log-fsynced", "once", str(store_path), "k", "new")
    whole = log_path.read_bytes()
    log_path.write_bytes(whole[: size + (len(whole) - size) // 2])  # the kernel wrote only half
    with Store.open(store_path) as store:
        assert store.get("k") == b"old"
        assert store.put("k", b"next").version.version == 2
        assert any("torn" in warning for warning in store.warnings)
        assert store.verify().ok


@pytest.mark.timeout(120)
def test_a_dedup_hit_after_a_crash_before_the_directory_fsync_makes_the_name_durable(store_path, monkeypatch):
    """Crash after link, before the shard fsync: the next put of the same bytes must not trust an unsynced name."""
    import imstore.objects as objects_module

    crash_at("object-linked", "once", str(store_path), "k", "new")
    synced = []
    real = objects_module.fsync_dir
    monkeypatch.setattr(objects_module, "fsync_dir", lambda path: (synced.append(os.fspath(path)), real(path)))
    with Store.open(store_path) as store:
        shard = store.objects.loose_path(hash_bytes(b"new")).parent
        assert store.put("k", b"new").version.version == 1
        assert os.fspath(shard) in synced and os.fspath(store.objects.root) in synced


@pytest.mark.timeout(120)
def test_a_long_lived_reader_sees_a_record_whose_writer_died_before_updating_the_index(store_path):
    """A server worker keeps its Store open: a record that is durable in the log but not indexed must show."""
    with Store.open(store_path) as reader:
        reader.put("k", b"old")
        assert reader.get("k") == b"old"
        crash_at("log-fsynced", "once", str(store_path), "k", "new")  # in the log, not in the index
        assert reader.get("k") == b"new"
        assert [v.version for v in reader.history("k")] == [1, 2]
        assert [v.key for v in reader.ls()] == ["k"] and len(reader.log_records()) == 2
