"""F1: a writer SIGKILLed at a random instant loses no acknowledged write and leaves nothing corrupt."""

from __future__ import annotations

import random
import signal
import time
from collections import Counter

import pytest
from workload import acks, content_for, read_line, start_writer

from imstore import Store
from imstore.hashing import hash_bytes


def kill_writer_once(store_path, tag: str, rng: random.Random) -> list[tuple[str, int, str, int]]:
    """Run a put loop, SIGKILL it 5-300 ms after it is ready; return what it acknowledged."""
    writer = start_writer("loop", str(store_path), tag)
    try:
        read_line(writer, "READY")
        deadline = time.monotonic() + rng.uniform(0.005, 0.300)
        while time.monotonic() < deadline and writer.poll() is None:
            time.sleep(0.001)
        writer.send_signal(signal.SIGKILL)
        output, errors = writer.communicate(timeout=30)
    finally:
        if writer.poll() is None:
            writer.kill()
    assert writer.returncode == -signal.SIGKILL, errors.decode()[-2000:]
    return acks(output)


def check_after_crash(store_path, history_of_acks: dict[str, list], tag: str, acknowledged: list) -> None:
    """Reopen after the kill: acknowledged writes intact, nothing else but the one in flight, verify clean."""
    with Store.open(store_path) as store:
        # Every acknowledged put is there, with its version and bytes.
        for key, version, object_hash, number in acknowledged:
            assert store.resolve(key, version=version).hash == object_hash
            assert store.get(key, version=version) == content_for(tag, number)
            assert hash_bytes(content_for(tag, number)) == object_hash
        # Each write appears at most once (contents are unique, so a hash names a write).
        seen = Counter(record.hash for record in store.log_records())
        assert set(seen.values()) <= {1}, "a write appears twice"
        # Unacknowledged: only the write in flight of each run (the next number) may appear, 0 or 1 times.
        history_of_acks[tag] = acknowledged
        allowed = set()
        for each_tag, each_acks in history_of_acks.items():
            numbers = [number for *_, number in each_acks]
            allowed.update(object_hash for _, _, object_hash, _ in each_acks)
            allowed.add(hash_bytes(content_for(each_tag, max(numbers, default=-1) + 1)))
        assert set(seen) <= allowed, "a write that was never attempted is in the store"
        report = store.verify()  # every object's bytes, the chain, the index against the log
        assert report.ok, report.problems


def run_kills(tmp_path, runs: int, seed: int, runs_per_store: int = 10) -> None:
    """runs kills in groups: each group shares a store, so later crashes must not hurt earlier writes."""
    rng = random.Random(seed)
    total_acks = 0
    for group in range(0, runs, runs_per_store):
        store_path = tmp_path / f"store{group}"
        Store.init(store_path)[0].close()
        history: dict[str, list] = {}
        for run in range(group, min(runs, group + runs_per_store)):
            tag = f"run{run}"
            acknowledged = kill_writer_once(store_path, tag, rng)
            total_acks += len(acknowledged)
            check_after_crash(store_path, history, tag, acknowledged)
        # After the group's crashes: every run's acknowledged writes are still there, and writes still work.
        with Store.open(store_path) as store:
            for tag, acknowledged in history.items():
                for key, version, _, number in acknowledged:
                    assert store.get(key, version=version) == content_for(tag, number)
            store.put("after", b"the store still takes writes")
            assert store.verify().ok
    assert total_acks > runs, "the kills came too early to test anything"


@pytest.mark.timeout(240)
def test_kill_minus_nine_30_runs(tmp_path):
    run_kills(tmp_path, runs=30, seed=1)


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_kill_minus_nine_200_runs(tmp_path):
    run_kills(tmp_path, runs=200, seed=2)
