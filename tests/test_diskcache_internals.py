"""The parts of diskcache that cache.py relies on beyond its public API (pinned <6 in pyproject.toml).

cache.py reads diskcache's `Cache` table with plain sqlite3 (start-up time) and
writes its rows directly, then culls with private members (fill speed). An
upgrade that renames a column or changes those members must fail here, loudly,
not turn every cache read into a silent miss.
"""

from __future__ import annotations

import inspect

import diskcache
import diskcache.core
import pytest

from imstore.cache import _MODE_BINARY, _MODE_RAW, _UPSERT, _set_many

# Every column cache.py names in its SQL (reads, _UPSERT, stats).
CACHE_COLUMNS = {
    "key", "raw", "store_time", "expire_time", "access_time", "access_count", "tag", "size", "mode", "filename", "value",
}  # fmt: skip


@pytest.fixture
def cache(tmp_path):
    with diskcache.Cache(str(tmp_path / "data"), eviction_policy="least-recently-stored", statistics=False) as opened:
        yield opened


def test_the_cache_table_has_the_columns_cache_py_reads_and_writes(cache):
    columns = {row[1] for row in cache._con.execute("PRAGMA table_info(Cache)")}
    assert CACHE_COLUMNS <= columns, f"diskcache's Cache table changed: missing {CACHE_COLUMNS - columns}"
    unique = [
        {row[2] for row in cache._con.execute(f"PRAGMA index_info({index[1]!r})")}
        for index in cache._con.execute("PRAGMA index_list(Cache)")
        if index[2]
    ]
    assert {"key", "raw"} in unique  # _UPSERT's ON CONFLICT(key, raw)
    settings = {row[0] for row in cache._con.execute("SELECT key FROM Settings")}
    assert {"count", "size"} <= settings  # stats() reads them


def test_the_value_modes_are_the_ones_cache_py_spells_out():
    assert (diskcache.core.MODE_RAW, diskcache.core.MODE_BINARY) == (_MODE_RAW, _MODE_BINARY)


def test_the_private_members_cache_py_calls_are_there_with_their_signatures(cache):
    assert callable(cache._con.execute) and callable(cache._con.executemany)
    assert list(inspect.signature(cache._transact).parameters) == ["retry", "filename"]
    assert list(inspect.signature(cache._cull).parameters) == ["now", "sql", "cleanup", "limit"]
    assert isinstance(cache.disk_min_file_size, int) and isinstance(cache.cull_limit, int)
    with cache.transact(), cache._transact() as (sql, cleanup):
        assert callable(sql) and callable(cleanup)


def test_rows_written_directly_are_the_rows_set_writes(cache):
    """_set_many's upsert must leave what set() leaves, so diskcache (and our reader) read it back alike."""
    cache.set("by-set", b"small value")
    _set_many(cache, [("by-upsert", b"small value")])
    query = "SELECT raw, expire_time, access_count, tag, size, mode, filename, value FROM Cache WHERE key = ?"
    assert cache._con.execute(query, ("by-upsert",)).fetchone() == cache._con.execute(query, ("by-set",)).fetchone()
    assert cache.get("by-upsert") == b"small value"
    assert "ON CONFLICT(key, raw)" in _UPSERT


def test_a_cull_within_the_fill_keeps_the_size_limit(tmp_path):
    with diskcache.Cache(str(tmp_path / "small"), size_limit=64 << 10, cull_limit=10, statistics=False) as small:
        for round_number in range(20):
            _set_many(small, [(f"k{round_number}-{n}", bytes(1000)) for n in range(10)])
        assert len(small) < 200  # 200 entries of 1000 bytes are over the limit: _cull removed some
