"""Group commit: concurrent puts in one process share frames, and stay exactly as correct as lone puts."""

from __future__ import annotations

import threading
from collections import defaultdict

import pytest

from imstore import Store
from imstore.errors import PreconditionFailed, Unavailable

pytestmark = pytest.mark.timeout(120)


def run_threads(count: int, work) -> list:
    barrier = threading.Barrier(count)
    results: list = [None] * count
    errors: list = []

    def runner(number: int) -> None:
        barrier.wait()
        try:
            results[number] = work(number)
        except BaseException as exc:  # collected, asserted on below
            errors.append(exc)

    threads = [threading.Thread(target=runner, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == [], errors
    return results


def test_concurrent_puts_share_frames_and_keep_versions_gap_free(store_path):
    def work(number: int):
        acknowledged = []
        with Store.open(store_path) as store:
            for n in range(40):
                for key in (f"shared-{n % 3}", f"own-{number}"):
                    result = store.put(key, f"{number}-{n}-{key}".encode())
                    acknowledged.append((key, result.version.version, result.version.hash, result.version.seq))
        return acknowledged

    acknowledged = [entry for entries in run_threads(8, work) for entry in entries]
    assert len(acknowledged) == 8 * 40 * 2
    with Store.open(store_path) as store:
        versions = defaultdict(list)
        for record in store.log_records():
            versions[record.key].append(record.version)
        assert sum(len(v) for v in versions.values()) == len(acknowledged)
        assert all(v == list(range(1, len(v) + 1)) for v in versions.values())
        for key, version, object_hash, seq in acknowledged:  # each put was told exactly what the log holds
            found = store.resolve(key, version)
            assert (found.hash, found.seq) == (object_hash, seq)
        frames = sum(1 for _ in store.log.scan(0))
        report = store.verify()
    assert report.ok, report.problems
    assert frames < len(acknowledged), "no two puts ever shared a frame"


def test_preconditions_are_decided_in_order_within_a_frame(store_path):
    def work(number: int):
        with Store.open(store_path) as store:
            try:
                return store.put("only-once", f"writer {number}".encode(), if_absent=True).version.version
            except PreconditionFailed:
                return None

    results = run_threads(8, work)
    assert [r for r in results if r is not None] == [1]
    with Store.open(store_path) as store:
        assert len(store.history("only-once")) == 1


def test_a_failed_append_fails_every_put_of_its_frame_and_none_is_acknowledged(store_path, monkeypatch):
    from imstore.log import Log

    real_append = Log.append
    calls = []

    def failing_append(self, payload, expected_size):
        calls.append(len(payload))
        raise Unavailable("appending to the log: No space left on device")

    monkeypatch.setattr(Log, "append", failing_append)

    def work(number: int):
        with Store.open(store_path) as store:
            try:
                store.put(f"k{number}", b"x" * (number + 1))
            except Unavailable:
                return "refused"
            return "acknowledged"

    assert run_threads(6, work) == ["refused"] * 6
    assert calls
    monkeypatch.setattr(Log, "append", real_append)
    with Store.open(store_path) as store:
        assert store.log_records() == []
        assert store.put("after", b"works").version.version == 1
        assert store.verify().ok
