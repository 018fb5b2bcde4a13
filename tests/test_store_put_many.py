"""Store.put_many: independent puts committed together (the server's batched small PUTs)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

import imstore.objects as objects_module
from imstore import Store
from imstore.cache import CacheSettings, cache_folder
from imstore.commit import Committer
from imstore.errors import ImstoreError, InvalidInput, InvalidKey, PreconditionFailed
from imstore.hashing import hash_bytes


def frames_in_log(store: Store) -> list[int]:
    """The number of records in each frame of the log, in order."""
    return [len(frame.records) for frame in store.log.scan()]


def test_every_put_of_a_batch_is_committed_in_one_frame_with_its_own_version(store):
    before = len(frames_in_log(store))
    answers = store.put_many([("a", b"one", {}), ("b", b"two", {"content_type": "text/plain"}), ("c", b"three", {"meta": {"x": "1"}})])
    assert [answer.version.key for answer in answers] == ["a", "b", "c"]
    assert all(not answer.unchanged and answer.version.version == 1 for answer in answers)
    assert frames_in_log(store)[before:] == [3]  # one append, one fsync for the three
    assert store.get("a") == b"one" and store.get("b") == b"two" and store.get("c") == b"three"
    assert store.resolve("b").content_type == "text/plain" and store.resolve("c").meta == {"x": "1"}
    assert answers[1].version.hash == hash_bytes(b"two")
    assert store.verify().ok


def test_the_same_key_twice_in_a_batch_gets_successive_versions_in_order(store):
    answers = store.put_many([("k", b"first", {}), ("other", b"x", {}), ("k", b"second", {})])
    assert [(answer.version.key, answer.version.version) for answer in answers] == [("k", 1), ("other", 1), ("k", 2)]
    assert store.get("k") == b"second" and store.get("k", 1) == b"first"
    assert sorted(version.version for version in store.history("k")) == [1, 2]
    assert store.verify().ok


def test_each_put_stands_alone_a_refusal_fails_only_its_own(store):
    store.put("taken", b"old")
    answers = store.put_many([
        ("taken", b"new", {"if_absent": True}),  # refused: the key exists
        ("fresh", b"data", {}),
        ("bad\x00key", b"data", {}),  # refused: a control character
        ("big", b"12345", {"max_size": 4}),  # refused: over its limit
        ("taken", b"newer", {"if_version": 1}),  # accepted: version 1 is the latest
        ("stale", b"data", {"if_version": 3}),  # refused: no such version
    ])  # fmt: skip
    assert isinstance(answers[0], PreconditionFailed)
    assert answers[1].version.version == 1
    assert isinstance(answers[2], InvalidKey)
    assert isinstance(answers[3], InvalidInput)
    assert answers[4].version.version == 2 and store.get("taken") == b"newer"
    assert isinstance(answers[5], PreconditionFailed)
    assert {record.key for record in store.log_records()} == {"taken", "fresh"}
    assert not store.objects.exists(hash_bytes(b"12345"))  # a refused put stores nothing
    assert store.verify().ok


def test_unchanged_content_adds_no_version(store):
    store.put("k", b"same")
    answers = store.put_many([("k", b"same", {}), ("k", b"changed", {})])
    assert answers[0].unchanged and answers[0].version.version == 1
    assert not answers[1].unchanged and answers[1].version.version == 2


def test_an_unknown_option_is_a_programming_error(store):
    with pytest.raises(TypeError):
        store.put_many([("k", b"x", {"if_match": 1})])


def test_a_failed_object_fsync_fails_only_that_put_and_nothing_points_at_it(store, monkeypatch):
    real_fsync = objects_module.fsync_fd
    written_bad = []

    def fsync_failing_for_bad_bytes(fd):
        if Path(os.readlink(f"/proc/self/fd/{fd}")).read_bytes().startswith(b"bad"):  # the fd is write-only
            written_bad.append(fd)
            raise OSError(5, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(objects_module, "fsync_fd", fsync_failing_for_bad_bytes)
    answers = store.put_many([("good", b"good bytes", {}), ("bad", b"bad bytes", {}), ("also", b"also good", {})])
    assert written_bad, "the fault was never hit"
    assert isinstance(answers[1], ImstoreError) and "Input/output error" in str(answers[1])
    assert answers[0].version.version == 1 and answers[2].version.version == 1
    assert not store.objects.exists(hash_bytes(b"bad bytes"))  # never installed under its name
    assert [record.key for record in store.log_records()] == ["good", "also"]
    assert store.verify().ok


def test_a_failed_directory_fsync_fails_the_whole_batch(store, monkeypatch):
    monkeypatch.setattr(objects_module, "fsync_dir", lambda path: (_ for _ in ()).throw(OSError(5, "Input/output error")))
    answers = store.put_many([("a", b"a bytes", {}), ("b", b"b bytes", {})])
    assert all(isinstance(answer, ImstoreError) and "Input/output error" in str(answer) for answer in answers)
    assert store.log_records() == []


def test_a_batch_fills_the_read_cache_in_one_go_and_diskcache_still_counts_right(store_path, private_cache_dir):
    import sqlite3

    settings = CacheSettings(directory=private_cache_dir)
    with Store.open(store_path, cache=settings) as store:
        answers = store.put_many([(f"k{number}", f"content {number}".encode(), {}) for number in range(20)])
        stats = store.cache.stats()
    database = cache_folder(settings, store_path) / "data" / "cache.db"
    rows = sqlite3.connect(database).execute("SELECT count(*) FROM Cache").fetchone()[0]
    assert rows == 60  # the object, the version row and the latest note of each put
    assert stats.entries == rows  # diskcache's own count (kept by its triggers) agrees
    with Store.open(store_path, cache=settings) as store:
        assert store.get("k7", 1) == b"content 7" and store.cache.hits >= 1
        assert store.open_object(answers[3].version.hash).read() == b"content 3"


def test_a_batch_larger_than_the_open_file_limit_still_writes_every_put(store):
    """write_many holds each object's temp file open until its fsync: a long list must not
    run the process out of file descriptors (a soft limit of 1024 is common)."""
    import resource

    store.put_many([("warm", b"imports done", {}), ("up", b"and the fsync pool started", {})])
    puts = [(f"many/{number}", b"content %d" % number, {}) for number in range(300)]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 150, hard))
    try:
        answers = store.put_many(puts)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    failed = [answer for answer in answers if isinstance(answer, Exception)]
    assert not failed, f"{len(failed)} puts failed, the first: {failed[0]}"
    assert store.get("many/299") == b"content 299" and store.verify().ok


def test_a_bug_in_a_later_frame_does_not_hide_the_puts_already_committed(store, monkeypatch):
    """The same key twice takes two frames: if the second fails with a bug, the first still gets its answer."""
    real_commit = Committer._commit_puts
    frames = []

    def commit_then_break(self, batch):
        frames.append(len(batch))
        if len(frames) == 2:
            raise RuntimeError("a bug in the second frame")
        return real_commit(self, batch)

    monkeypatch.setattr(Committer, "_commit_puts", commit_then_break)
    answers = store.put_many([("k", b"first", {}), ("k", b"second", {})])
    assert answers[0].version.version == 1 and store.get("k") == b"first"  # committed: its answer says so
    assert isinstance(answers[1], RuntimeError)


def test_a_process_forked_after_a_batch_can_write_batches_too(store):
    """The fsync threads do not survive fork(): a child must not wait on the parent's pool forever."""
    store.put_many([("before", b"1", {}), ("fork", b"2", {})])  # the pool exists now
    child = os.fork()
    if child == 0:  # the child: exit 0 only if its own batch is written
        try:
            with Store.open(store.root) as own:  # (an SQLite connection must not cross a fork)
                answers = own.put_many([("child", b"3", {}), ("child2", b"4", {})])
            os._exit(0 if all(not isinstance(answer, Exception) for answer in answers) else 1)
        except BaseException:
            os._exit(2)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        done, status = os.waitpid(child, os.WNOHANG)
        if done:
            break
        time.sleep(0.05)
    else:
        os.kill(child, 9)
        os.waitpid(child, 0)
        pytest.fail("the forked child hung in put_many")
    assert os.waitstatus_to_exitcode(status) == 0
    assert store.get("child2") == b"4"
