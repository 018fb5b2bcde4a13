"""F12: a broken or racing cache is rebuilt or bypassed, and never serves a wrong byte.

- 8 processes create the cache at the same instant;
- garbage in each of the cache's files (database, store-id marker, value files);
- a process killed at random instants while it fills the cache.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from imstore import Store
from imstore.cache import DB_NAME, MARKER_NAME, CacheSettings, cache_folder
from imstore.hashing import hash_bytes

WORKERS = 8


@pytest.fixture
def cache(private_cache_dir: Path) -> CacheSettings:
    return CacheSettings(directory=private_cache_dir)


def _fill_store(store_path: Path, count: int) -> dict[str, bytes]:
    """Keys k0..k{count-1}, sizes both inline in the cache database and in value files."""
    contents = {f"k{n}": os.urandom(random.choice([10, 3000, 40_000, 120_000])) for n in range(count)}
    with Store.open(store_path) as store:  # written without the cache: readers create it
        for key, data in contents.items():
            store.put(key, data)
    return contents


_RACER = textwrap.dedent(
    """
    import os, sys, time
    from imstore import Store
    from imstore.cache import CacheSettings
    from imstore.hashing import hash_bytes
    store_path, cache_dir, go, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    deadline = time.monotonic() + 30
    while not os.path.exists(go) and time.monotonic() < deadline:
        time.sleep(0.001)
    with Store.open(store_path, cache=CacheSettings(directory=cache_dir)) as store:
        for n in range(count):
            found, reader = store.open_version(f"k{n}", 1)
            print(f"k{n}", hash_bytes(reader.read()), flush=True)
        notes = store.cache.notes
    print("NOTES", len(notes), notes, file=sys.stderr)
    """
)


@pytest.mark.timeout(120)
def test_eight_processes_creating_the_cache_at_once_all_read_right_bytes(store_path, cache):
    contents = _fill_store(store_path, 12)
    go = store_path.parent / "go"
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", _RACER, str(store_path), str(cache.directory), str(go), str(len(contents))],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(WORKERS)
    ]
    go.touch()
    for racer in racers:
        out, err = racer.communicate(timeout=90)
        assert racer.returncode == 0, err
        seen = dict(line.split() for line in out.splitlines())
        assert seen == {key: hash_bytes(data) for key, data in contents.items()}, err
    with Store.open(store_path, cache=cache) as store:  # the cache they made together works
        for key, data in contents.items():
            assert store.get(key, 1) == data
        stats = store.cache.stats()
        assert store.cache.notes == []
    assert stats.entries == 2 * len(contents) and stats.hits >= 2 * len(contents)


def _damage(kind: str, folder: Path) -> None:
    data = folder / "data"
    if kind == "database-garbage":
        (data / DB_NAME).write_bytes(os.urandom(16384))
    elif kind == "database-truncated":
        database = data / DB_NAME
        database.write_bytes(database.read_bytes()[:1500])
        for suffix in ("-wal", "-shm"):
            Path(str(database) + suffix).unlink(missing_ok=True)
    elif kind == "database-zeroed":
        database = data / DB_NAME
        database.write_bytes(bytes(database.stat().st_size))
    elif kind == "marker-garbage":
        (folder / MARKER_NAME).write_bytes(os.urandom(40))
    elif kind == "value-files-garbage":
        for path in data.rglob("*.val"):
            path.write_bytes(os.urandom(path.stat().st_size))
    elif kind == "data-is-a-file":
        import shutil

        shutil.rmtree(data)
        data.write_bytes(b"garbage")
    else:
        raise AssertionError(kind)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "kind", ["database-garbage", "database-truncated", "database-zeroed", "marker-garbage", "value-files-garbage", "data-is-a-file"]
)
def test_a_garbage_cache_is_rebuilt_or_bypassed_never_trusted(kind, store_path, cache):
    contents = _fill_store(store_path, 8)
    with Store.open(store_path, cache=cache) as store:
        for key in contents:
            store.get(key, 1)  # fill
    _damage(kind, cache_folder(cache, store_path))
    with Store.open(store_path, cache=cache) as store:
        for key, data in contents.items():
            assert store.get(key, 1) == data
            assert store.get(key) == data
    with Store.open(store_path, cache=cache) as store:  # rebuilt: it fills and answers again
        for key, data in contents.items():
            assert store.get(key, 1) == data
        assert store.cache.hits >= len(contents), store.cache.notes
    aside = store_path.parent / "aside"
    os.rename(store_path, aside)  # and what it holds now is enough to read with the store gone
    with Store.open(store_path, cache=cache) as store:
        assert all(store.get(key, 1) == data for key, data in contents.items())


_FILLER = textwrap.dedent(
    """
    import os, random, sys
    from imstore import Store
    from imstore.cache import CacheSettings
    store_path, cache_dir = sys.argv[1], sys.argv[2]
    with Store.open(store_path, cache=CacheSettings(directory=cache_dir)) as store:
        for n in range(100000):
            data = os.urandom(random.choice([5, 2000, 50_000, 300_000]))
            found = store.put(f"key{n % 17}", data).version
            store.get(found.key, found.version)
            print("ACK", found.key, found.version, found.hash, flush=True)
    """
)


def _kill_a_filler_at_a_random_instant(store_path: Path, cache: CacheSettings, rng: random.Random) -> list[tuple[str, int, str]]:
    filler = subprocess.Popen([sys.executable, "-c", _FILLER, str(store_path), str(cache.directory)], stdout=subprocess.PIPE, text=True)
    first = filler.stdout.readline()  # started and past the first fill: the cache exists
    time.sleep(rng.uniform(0.005, 0.3))  # the random instant of the kill, not a wait for a condition
    filler.send_signal(signal.SIGKILL)
    rest, _ = filler.communicate(timeout=30)
    acks = []
    for line in (first + rest).splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[0] == "ACK":
            acks.append((parts[1], int(parts[2]), parts[3]))
    return acks


def _check_every_version(store_path: Path, cache: CacheSettings, acks: list[tuple[str, int, str]]) -> None:
    with Store.open(store_path, cache=cache) as cached, Store.open(store_path) as plain:
        for key, version, object_hash in acks:
            data = cached.get(key, version)
            assert hash_bytes(data) == object_hash
        for found in plain.log_records():
            cached_version, reader = cached.open_version(found.key, found.version)
            assert cached_version == found and hash_bytes(reader.read()) == found.hash


def _kill_runs(store_path: Path, cache: CacheSettings, runs: int) -> None:
    rng = random.Random(os.environ.get("IMSTORE_TEST_SEED", "f12"))
    total = 0
    for _ in range(runs):
        acks = _kill_a_filler_at_a_random_instant(store_path, cache, rng)
        _check_every_version(store_path, cache, acks)
        total += len(acks)
    assert total >= runs  # every run got at least one write acknowledged before its kill


@pytest.mark.timeout(300)
def test_a_process_killed_while_filling_the_cache_leaves_no_wrong_bytes(store_path, cache):
    _kill_runs(store_path, cache, runs=6)


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_a_process_killed_while_filling_the_cache_leaves_no_wrong_bytes_many_runs(store_path, cache):
    _kill_runs(store_path, cache, runs=40)
