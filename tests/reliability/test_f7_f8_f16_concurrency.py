"""F7: concurrent writers; F8: the same content at the same instant; F16: the lock holder dies."""

from __future__ import annotations

import random
import signal
import threading
import time
from collections import Counter

import pytest
from workload import acks, read_line, start_writer

from imstore import Store
from imstore.errors import KeyNotFound
from imstore.hashing import blake3, hash_bytes


def start_on_a_barrier(args_per_process: list[list[str]]) -> list[bytes]:
    """Start every writer, wait until each is READY, release them at once, return their outputs."""
    writers = [start_writer(*args) for args in args_per_process]
    try:
        for writer in writers:
            read_line(writer, "READY")
        for writer in writers:  # the barrier: one line on stdin each, as fast as we can
            writer.stdin.write(b"go\n")
            writer.stdin.flush()
        outputs = []
        for writer in writers:
            output, errors = writer.communicate(timeout=600)
            assert writer.returncode == 0, errors.decode()[-2000:]
            outputs.append(output)
        return outputs
    finally:
        for writer in writers:
            if writer.poll() is None:
                writer.kill()


def _read_while_writing(store_path, stop: threading.Event, reads: list, failures: list) -> None:
    """A reader racing the writers: every version it lists must read back as bytes with that hash."""
    deadline = time.monotonic() + 600
    while not stop.is_set() and time.monotonic() < deadline:
        try:
            with Store.open(store_path) as store:
                for record in store.log_records()[-5:]:
                    data = store.get(record.key, version=record.version)
                    assert hash_bytes(data) == record.hash
                    reads.append(record.seq)
                versions = [v.version for v in store.history("shared/1")]
                assert versions == list(range(1, len(versions) + 1))
        except KeyNotFound:
            pass  # before the first shared put
        except Exception as exc:  # any other error is a failure of the test
            failures.append(repr(exc))
            return


def run_concurrent_writers(store_path, processes: int, puts: int) -> None:
    stop, reads, failures = threading.Event(), [], []
    reader = threading.Thread(target=_read_while_writing, args=(store_path, stop, reads, failures))
    reader.start()
    try:
        outputs = start_on_a_barrier([["batch", str(store_path), f"w{n}", str(puts)] for n in range(processes)])
    finally:
        stop.set()
        reader.join(timeout=60)
    assert not failures, failures
    assert reads, "the reader never read anything while the writers ran"
    acknowledged = [ack for output in outputs for ack in acks(output)]
    assert len(acknowledged) == processes * puts
    with Store.open(store_path) as store:
        records = store.log_records()
        assert len(records) == processes * puts, "every acknowledged put is a version"
        assert [r.seq for r in records] == list(range(1, len(records) + 1))
        per_key: dict[str, list[int]] = {}
        for record in records:
            per_key.setdefault(record.key, []).append(record.version)
        for key, versions in per_key.items():
            assert versions == list(range(1, len(versions) + 1)), f"{key}: versions not gap-free"
        contents = Counter(store.get(r.key, version=r.version) for r in records)
        assert len(contents) == processes * puts and set(contents.values()) == {1}, "a duplicate write"
        for key, version, object_hash, _ in acknowledged:
            assert store.resolve(key, version=version).hash == object_hash
        report = store.verify()
        assert report.ok, report.problems


@pytest.mark.timeout(300)
def test_f7_concurrent_writers_8x100(store_path):
    run_concurrent_writers(store_path, processes=8, puts=100)


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_f7_concurrent_writers_8x500(store_path):
    run_concurrent_writers(store_path, processes=8, puts=500)


def _watch_object(path: str, size: int, expected_hash: str, stop: threading.Event, seen: list) -> None:
    """Read the final object name whenever it exists: it must never be partial (bounded by stop)."""
    deadline = time.monotonic() + 120
    while not stop.is_set() and time.monotonic() < deadline:
        try:
            with open(path, "rb") as handle:
                data = handle.read()
        except FileNotFoundError:
            time.sleep(0)  # yield the GIL to the test thread
            continue
        seen.append((len(data), blake3(data).hexdigest() if len(data) == size else None))


@pytest.mark.timeout(300)
@pytest.mark.parametrize("round_number", range(3))
def test_f8_same_blob_at_the_same_instant(store_path, round_number):
    size, seed = 1 << 20, f"blob{round_number}"
    blob_hash = hash_bytes(random.Random(seed).randbytes(size))
    with Store.open(store_path) as store:
        final = str(store.objects.loose_path(blob_hash))
    stop, seen = threading.Event(), []
    watcher = threading.Thread(target=_watch_object, args=(final, size, blob_hash, stop, seen))
    watcher.start()
    try:
        outputs = start_on_a_barrier([["same", str(store_path), f"key{n}", str(size), seed] for n in range(8)])
    finally:
        stop.set()
        watcher.join(timeout=10)
    assert {ack[2] for output in outputs for ack in acks(output)} == {blob_hash}
    assert seen and all(entry == (size, blob_hash) for entry in seen), "a partial object was visible"
    with Store.open(store_path) as store:
        assert list(store.objects.iter_ids()) == [blob_hash]
        assert store.objects.temp_files() == []
        assert sorted(r.key for r in store.log_records()) == [f"key{n}" for n in range(8)]
        assert store.verify().ok


@pytest.mark.timeout(60)
def test_f16_the_next_writer_proceeds_within_a_second_of_the_lock_holder_dying(store_path):
    holder = start_writer("hold-lock", str(store_path))
    try:
        read_line(holder, "LOCKED")
        done = threading.Event()
        result = {}

        def second_writer():
            with Store.open(store_path) as store:
                result["version"] = store.put("k", b"after the holder died").version.version
            done.set()

        thread = threading.Thread(target=second_writer, daemon=True)
        thread.start()
        assert not done.wait(0.3), "the second writer did not wait for the lock"
        killed_at = time.monotonic()
        holder.send_signal(signal.SIGKILL)
        assert done.wait(1.0), "the next writer did not get the lock within 1 s of the holder's death"
        waited = time.monotonic() - killed_at
        assert result["version"] == 1 and waited < 1.0
    finally:
        if holder.poll() is None:
            holder.kill()
        holder.wait(timeout=10)
    with Store.open(store_path) as store:
        assert store.verify().ok
