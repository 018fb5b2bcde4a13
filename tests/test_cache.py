"""The read cache: what it holds, that it never serves a wrong byte, and its CLI."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imstore import Store
from imstore.cache import DB_NAME, MARKER_NAME, CacheSettings, StoreCache, cache_folder, parse_size
from imstore.errors import NoStore, Unavailable
from imstore.hashing import hash_bytes
from tests.conftest import run_cli_in_process


@pytest.fixture
def cache_settings(private_cache_dir: Path) -> CacheSettings:
    return CacheSettings(directory=private_cache_dir)


def cached_store(store_path: Path, cache_settings: CacheSettings) -> Store:
    return Store.open(store_path, cache=cache_settings)


def cache_db(cache_settings: CacheSettings, store_path: Path) -> sqlite3.Connection:
    return sqlite3.connect(cache_folder(cache_settings, store_path) / "data" / DB_NAME, isolation_level=None)


# ---------------------------------------------------------------- filling and hitting
def test_a_put_fills_the_cache_and_a_later_read_is_a_hit_without_the_index(store_path, cache_settings):
    with cached_store(store_path, cache_settings) as store:
        written = store.put("k", b"hello").version
    with cached_store(store_path, cache_settings) as store:
        found, reader = store.open_version("k", 1)
        assert reader.read() == b"hello" and found == written
        assert store._index is None, "a cached (key, version) must not need the index"
        assert store.cache.hits == 2 and store.cache.misses == 0


def test_a_read_fills_the_cache_for_a_store_written_without_it(store_path, cache_settings):
    with Store.open(store_path) as store:
        object_id = store.put("k", b"from the store").version.hash
    with cached_store(store_path, cache_settings) as store:
        assert store.get("k", 1) == b"from the store"
        assert store.cache.misses == 2  # version and bytes
    with cached_store(store_path, cache_settings) as store:
        assert store.cat(object_id) == b"from the store" and store.cache.hits == 1


def test_objects_over_the_size_limit_are_not_cached(store_path, private_cache_dir):
    small_limit = CacheSettings(directory=private_cache_dir, max_object_size=1000)
    with Store.open(store_path, cache=small_limit) as store:
        big = store.put("big", os.urandom(1001)).version.hash
        small = store.put("small", os.urandom(1000)).version.hash
    names = {row[0] for row in cache_db(small_limit, store_path).execute("SELECT key FROM Cache")}
    assert f"o:{small}" in names and f"o:{big}" not in names


def test_the_cache_stays_within_its_size_limit(store_path, private_cache_dir):
    limited = CacheSettings(directory=private_cache_dir, size_limit=1 << 20)
    with Store.open(store_path, cache=limited) as store:
        for number in range(40):
            store.put(f"k{number}", os.urandom(100 << 10))
        stats = store.cache.stats()
    assert stats.bytes <= 1.5 * (1 << 20), stats
    assert 0 < stats.entries < 80


def test_no_cache_setting_means_no_cache_folder(store_path, private_cache_dir):
    with Store.open(store_path, cache=CacheSettings(enabled=False, directory=private_cache_dir)) as store:
        store.put("k", b"x")
        assert store.cache is None and store.get("k") == b"x"
    assert not private_cache_dir.exists()


def test_cache_folder_is_named_by_the_resolved_store_path(tmp_path, cache_settings, store_path):
    link = tmp_path / "link"
    link.symlink_to(store_path)
    assert cache_folder(cache_settings, link) == cache_folder(cache_settings, store_path)
    assert cache_folder(cache_settings, tmp_path / "other") != cache_folder(cache_settings, store_path)


def test_settings_from_the_environment():
    env = {"IMSTORE_CACHE_DIR": "/x/y", "IMSTORE_CACHE_SIZE": "512M", "IMSTORE_NO_CACHE": "1"}
    assert CacheSettings.from_env(env) == CacheSettings(enabled=False, directory=Path("/x/y"), size_limit=512 << 20)
    assert CacheSettings.from_env({}).enabled and parse_size("1GiB") == 1 << 30 and parse_size("4k") == 4096


# ---------------------------------------------------------------- never a wrong byte
def test_a_tampered_cached_object_is_dropped_and_read_from_the_store(store_path, cache_settings):
    with cached_store(store_path, cache_settings) as store:
        object_id = store.put("k", b"right bytes").version.hash
    cache_db(cache_settings, store_path).execute("UPDATE Cache SET value = ? WHERE key = ?", (b"wrong bytes", f"o:{object_id}"))
    with cached_store(store_path, cache_settings) as store:
        assert store.get("k", 1) == b"right bytes"
        assert any("did not match its hash" in note for note in store.cache.notes)
    with cached_store(store_path, cache_settings) as store:  # refilled with good bytes
        assert store.cat(object_id) == b"right bytes" and store.cache.hits == 1


def test_a_tampered_cached_file_of_a_large_object_is_dropped(store_path, cache_settings):
    payload = os.urandom(100 << 10)  # diskcache keeps values over 32 KiB in files
    with cached_store(store_path, cache_settings) as store:
        object_id = store.put("k", payload).version.hash
    (filename,) = cache_db(cache_settings, store_path).execute("SELECT filename FROM Cache WHERE key = ?", (f"o:{object_id}",)).fetchone()
    value_file = cache_folder(cache_settings, store_path) / "data" / filename
    value_file.write_bytes(payload[:-1] + bytes([payload[-1] ^ 1]))
    with cached_store(store_path, cache_settings) as store:
        assert store.cat(object_id) == payload
        assert store.cache.misses == 1


def test_a_damaged_cached_version_record_is_dropped_and_read_from_the_index(store_path, cache_settings):
    with cached_store(store_path, cache_settings) as store:
        written = store.put("k", b"x", message="m").version
    db = cache_db(cache_settings, store_path)
    (blob,) = db.execute("SELECT value FROM Cache WHERE key = 'v:1:k'").fetchone()
    db.execute("UPDATE Cache SET value = ? WHERE key = 'v:1:k'", (blob[:-1] + bytes([blob[-1] ^ 1]),))
    with cached_store(store_path, cache_settings) as store:
        assert store.resolve("k", 1) == written
        assert any("checksum" in note for note in store.cache.notes)


def test_a_memo_entry_that_no_longer_hashes_right_is_not_served(store_path, cache_settings):
    with cached_store(store_path, cache_settings) as store:
        object_id = store.put("k", b"right").version.hash
        store.cache._memo_objects[object_id] = b"wrong"  # e.g. a bug elsewhere scribbling on memory
        assert store.cat(object_id) == b"right"


def test_a_damaged_store_object_is_served_from_the_verified_cache_copy(cli, store_path):
    object_hash = json.loads(cli("put", "k", "--json", stdin=b"good").stdout)["hash"]
    path = store_path / "objects" / object_hash[:2] / object_hash[2:]
    os.chmod(path, 0o644)
    path.write_bytes(b"evil")
    assert cli("get", "k").stdout == b"good"  # F5 allows a verified copy
    assert cli("--no-cache", "get", "k").code == 5


def test_a_cache_of_another_store_at_the_same_path_is_cleared(tmp_path, cache_settings):
    path = tmp_path / "s"
    with Store.init(path)[0] as first:
        first.close()
    with cached_store(path, cache_settings) as store:
        store.put("k", b"old store")
    os.rename(path, tmp_path / "old")
    with Store.init(path)[0] as second:
        second.close()
    with cached_store(path, cache_settings) as store:
        store.put("k", b"new store")
        assert store.get("k", 1) == b"new store"
        assert any("another store" in note for note in store.cache.notes)
    assert (cache_folder(cache_settings, path) / MARKER_NAME).read_text().strip() == store.store_id


def test_a_garbage_cache_database_is_rebuilt(store_path, cache_settings):
    with cached_store(store_path, cache_settings) as store:
        store.put("k", b"x")
    (cache_folder(cache_settings, store_path) / "data" / DB_NAME).write_bytes(os.urandom(8192))
    with cached_store(store_path, cache_settings) as store:
        assert store.get("k", 1) == b"x"
        store.put("k2", b"y")
    with cached_store(store_path, cache_settings) as store:
        assert store.get("k2", 1) == b"y" and store.cache.hits == 2


WRITES = st.lists(st.tuples(st.sampled_from(["a", "b", "c/d", "ü"]), st.binary(max_size=3000)), min_size=1, max_size=8)
PICKS = st.lists(st.tuples(st.integers(0, 3), st.integers(1, 8)), min_size=1, max_size=20)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(writes=WRITES, picks=PICKS)
def test_cached_and_uncached_reads_return_identical_bytes(tmp_path_factory, writes, picks):
    _compare_cached_and_uncached(tmp_path_factory.mktemp("hyp"), writes, picks)


@pytest.mark.slow
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(writes=WRITES, picks=PICKS)
def test_cached_and_uncached_reads_return_identical_bytes_many_examples(tmp_path_factory, writes, picks):
    _compare_cached_and_uncached(tmp_path_factory.mktemp("hyp"), writes, picks)


def _compare_cached_and_uncached(root: Path, writes: list[tuple[str, bytes]], picks: list[tuple[int, int]]) -> None:
    """Write through the cache, then read the same (key, version)s with and without it; each
    cached read twice (from the cache database, then from the process's memo)."""
    settings_ = CacheSettings(directory=root / "cache")
    Store.init(root / "s")[0].close()
    with Store.open(root / "s", cache=settings_) as store:
        for key, data in writes:
            store.put(key, data)
    keys = ["a", "b", "c/d", "ü"]
    with Store.open(root / "s", cache=settings_) as cached, Store.open(root / "s") as plain:
        for memo in (False, True):
            for key_index, version in picks:
                key = keys[key_index]
                assert _outcome(cached, key, version) == _outcome(plain, key, version), (memo, key, version)
                assert _outcome(cached, key, None) == _outcome(plain, key, None)


def _outcome(store: Store, key: str, version: int | None):
    try:
        found, reader = store.open_version(key, version)
        data = reader.read()
        assert hash_bytes(data) == found.hash
        return found, data
    except Exception as exc:  # noqa: BLE001 -- the same error either way is part of "identical"
        return type(exc).__name__


# ---------------------------------------------------------------- a store that is not there
def test_a_path_without_a_store_is_no_store_unless_a_cache_for_it_exists(tmp_path, cache_settings):
    with pytest.raises(NoStore):
        Store.open(tmp_path / "nothing", cache=cache_settings)
    path = tmp_path / "s"
    Store.init(path)[0].close()
    with cached_store(path, cache_settings) as store:
        store.put("k", b"cached")
    os.rename(path, tmp_path / "gone")
    with cached_store(path, cache_settings) as store:
        assert store.offline_reason and store.get("k", 1) == b"cached"
        found, reader = store.open_version("k")
        assert found.stale and reader.read() == b"cached"
        assert any("may be stale" in warning for warning in store.warnings)
        with pytest.raises(Unavailable):
            store.put("k", b"new")
        with pytest.raises(Unavailable):
            store.get("never-cached")
    with pytest.raises(NoStore):
        Store.open(path)  # without the cache it is simply no store


def test_versions_by_number_are_never_stale(store_path, cache_settings, tmp_path):
    with cached_store(store_path, cache_settings) as store:
        store.put("k", b"1")
    os.rename(store_path, tmp_path / "away")
    with cached_store(store_path, cache_settings) as store:
        found, _reader = store.open_version("k", 1)
        assert not found.stale and store.warnings == []


def test_a_stale_latest_is_the_newest_any_store_object_cached_not_this_ones_memo(store_path, cache_settings, tmp_path):
    """Two long-lived Stores (two threads or workers of a serve): the one that remembers an
    older latest in its memo still answers with the newer one the other cached."""
    with cached_store(store_path, cache_settings) as first, cached_store(store_path, cache_settings) as second:
        first.put("k", b"1")
        assert first.get("k") == b"1"  # first's memo: latest of k is version 1
        second.put("k", b"2")
        assert second.get("k") == b"2"
        os.rename(store_path, tmp_path / "away")
        found, reader = first.open_version("k")
        assert found.stale and found.version == 2 and reader.read() == b"2"


# ---------------------------------------------------------------- CLI
def test_cache_stats_counts_entries_hits_and_misses(cli):
    cli("put", "k", stdin=b"x" * 100)
    assert cli("get", "k", "--version", "1").stdout == b"x" * 100
    stats = json.loads(cli("cache", "stats", "--json").stdout)
    assert set(stats) == {"path", "store_id", "entries", "bytes", "hits", "misses"}
    assert stats["entries"] == 3 and stats["bytes"] >= 100  # object, version, latest
    assert stats["hits"] == 2 and stats["misses"] == 0
    cli("--no-cache", "get", "k")
    assert json.loads(cli("cache", "stats", "--json").stdout)["hits"] == 2
    lines = cli("cache", "stats").out.splitlines()
    assert [line.split("\t")[0] for line in lines] == ["path", "store_id", "entries", "bytes", "hits", "misses"]


def test_cache_stats_of_a_path_with_no_store_and_no_cache_is_exit_10(tmp_path):
    # README: a path with no store is exit 10 unless a cache for it exists.
    nothing = tmp_path / "nothing"
    result = run_cli_in_process(["--store", str(nothing), "cache", "stats", "--json"])
    assert (result.code, result.stdout) == (10, b"")
    assert result.stderr == f"imstore: error: no store at {nothing} (create one with: imstore init {nothing})\n"
    assert not nothing.exists()


def test_cache_stats_works_while_the_store_is_down_and_on_a_store_with_no_cache_yet(cli, store_path, tmp_path):
    fresh = cli("cache", "stats", "--json")
    assert fresh.code == 0 and json.loads(fresh.stdout)["entries"] == 0
    cli("put", "k", stdin=b"x")
    os.rename(store_path, tmp_path / "away")
    down = cli("cache", "stats", "--json")
    assert down.code == 0 and json.loads(down.stdout)["entries"] > 0


def test_cache_clear_empties_it_and_the_store_still_answers(cli, store_path, private_cache_dir):
    cli("put", "k", stdin=b"x")
    folder = cache_folder(CacheSettings(directory=private_cache_dir), store_path)
    assert folder.exists()
    assert cli("cache", "clear").code == 0
    assert not folder.exists()
    assert json.loads(cli("cache", "stats", "--json").stdout)["entries"] == 0
    assert cli("get", "k").stdout == b"x"
    assert json.loads(cli("--json", "cache", "clear", "--all").stdout) == {"cleared": 1}


def test_cache_options_on_the_command_line(cli, tmp_path, store_path):
    elsewhere = tmp_path / "elsewhere"
    assert cli("--cache-dir", str(elsewhere), "--cache-size", "10M", "put", "k", stdin=b"x").code == 0
    assert cache_folder(CacheSettings(directory=elsewhere), store_path).exists()
    assert cli("--cache-size", "lots", "get", "k").code == 2


def test_stale_warning_and_exit_6_for_writes_when_the_store_is_gone(cli, store_path, tmp_path):
    cli("put", "k", stdin=b"one")
    os.rename(store_path, tmp_path / "away")
    result = cli("get", "k")
    assert result.code == 0 and result.stdout == b"one"
    assert "may be stale" in result.stderr and len(result.stderr.splitlines()) == 1
    assert cli("get", "k", "--version", "1").stderr == ""
    written = cli("put", "k2", stdin=b"two")
    assert written.code == 6 and "unavailable" in written.stderr
    assert cli("get", "unknown").code == 6
    assert cli("--no-cache", "get", "k").code == 10


def test_a_get_served_by_the_cache_does_not_import_diskcache(store_path):
    """Start-up: diskcache is imported only to fill the cache, never to read it."""
    with Store.open(store_path, cache=CacheSettings.from_env()) as store:
        store.put("k", b"hot")  # fills the cache
    code = (
        "import sys; from imstore import cli; code = cli.run(['--store', sys.argv[1], 'get', 'k', '-o', sys.argv[2]]);"
        "print(code, 'diskcache' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(store_path), str(store_path.parent / "out")], capture_output=True, text=True, timeout=60
    )
    assert out.stdout.split() == ["0", "False"], out.stderr
    assert (store_path.parent / "out").read_bytes() == b"hot"


def test_for_path_reads_stats_without_the_store(tmp_path, cache_settings):
    stats = StoreCache.for_path(cache_settings, tmp_path / "never").stats()
    assert (stats.entries, stats.bytes, stats.hits, stats.misses, stats.store_id) == (0, 0, 0, 0, None)


def test_imstore_no_cache_in_the_environment_turns_the_cache_off(cli, private_cache_dir):
    assert cli("put", "k", stdin=b"x", env={"IMSTORE_NO_CACHE": "1"}).code == 0
    assert cli("get", "k", env={"IMSTORE_NO_CACHE": "1"}).stdout == b"x"
    assert not private_cache_dir.exists()
    assert cli("get", "k").stdout == b"x" and private_cache_dir.exists()


def test_an_entry_read_long_after_it_was_stored_is_stored_again(store_path, cache_settings):
    """Least-recently-stored eviction plus re-storing what is still read: LRU at the grain of a day."""
    with cached_store(store_path, cache_settings) as store:
        object_id = store.put("k", b"still used").version.hash
    db = cache_db(cache_settings, store_path)
    db.execute("UPDATE Cache SET store_time = store_time - 2 * 86400")
    old = dict(db.execute("SELECT key, store_time FROM Cache"))
    with cached_store(store_path, cache_settings) as store:
        assert store.get("k", 1) == b"still used"
    new = dict(db.execute("SELECT key, store_time FROM Cache"))
    assert new[f"o:{object_id}"] > old[f"o:{object_id}"] + 86400 and new["v:1:k"] > old["v:1:k"] + 86400
    assert new["l:k"] == old["l:k"]  # not read, not refreshed


@pytest.mark.parametrize("failure", ["disk-full", "timeout"])
def test_a_cache_that_cannot_be_written_never_fails_a_put_or_a_get(store_path, cache_settings, monkeypatch, failure):
    import errno

    import diskcache

    def refuse(self, *args, **kwargs):
        if failure == "disk-full":
            raise OSError(errno.ENOSPC, "No space left on device")
        raise diskcache.Timeout("busy")

    monkeypatch.setattr(diskcache.Cache, "set", refuse)
    monkeypatch.setattr(diskcache.Cache, "transact", refuse)  # how a put's entries are written together
    with cached_store(store_path, cache_settings) as store:
        assert store.put("k", b"x").version.version == 1
        assert store.get("k") == b"x" and store.get("k", 1) == b"x"
        if failure == "disk-full":
            assert any("cannot fill the cache" in note for note in store.cache.notes)
        else:
            assert any("busy" in note for note in store.cache.notes)
        monkeypatch.undo()
        object_id = store.put("k", b"y").version.hash
    # A full disk stops filling for the process; a busy lock only skips those entries.
    filled = f"o:{object_id}" in dict(cache_db(cache_settings, store_path).execute("SELECT key, 1 FROM Cache"))
    assert filled == (failure == "timeout")


def test_a_fill_past_the_size_limit_evicts_a_few_old_entries_not_the_whole_cache(store_path, private_cache_dir):
    # Entries kept in the database (below diskcache's 32 KiB file size): a put's batched fill
    # culls inside its transaction, where the database file has not shrunk yet.
    limited = CacheSettings(directory=private_cache_dir, size_limit=1 << 20)
    with Store.open(store_path, cache=limited) as store:
        for number in range(80):
            object_id = store.put(f"k{number}", os.urandom(20 << 10)).version.hash
            rows = dict(cache_db(limited, store_path).execute("SELECT key, 1 FROM Cache"))
            assert f"o:{object_id}" in rows, f"put {number}: its own fill was evicted"
            if number >= 40:  # past the limit: it holds about 1 MiB of 20 KiB objects
                assert len(rows) >= 3 * 20, f"put {number}: the cache was emptied ({len(rows)} entries left)"


@pytest.mark.parametrize("how", ["two puts", "one put_many"])
def test_a_stale_latest_is_the_newest_even_after_a_version_whose_record_was_kept_in_a_file(store_path, cache_settings, tmp_path, how):
    """diskcache keeps an entry of 32 KiB or more in a file: a record with big metadata. The
    next, smaller record of that key must still replace it (as diskcache's set() does)."""
    big = {"notes": "x" * (40 << 10)}
    with cached_store(store_path, cache_settings) as store:
        if how == "two puts":
            store.put("k", b"1", meta=big)
            store.put("k", b"2")
        else:
            assert [answer.version.version for answer in store.put_many([("k", b"1", {"meta": big}), ("k", b"2", {})])] == [1, 2]
    os.rename(store_path, tmp_path / "away")
    with cached_store(store_path, cache_settings) as store:
        found, reader = store.open_version("k")
        assert found.stale and (found.version, reader.read()) == (2, b"2")
