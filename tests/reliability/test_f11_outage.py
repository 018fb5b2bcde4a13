"""F11: the store is unavailable. Cached reads are served and hash-checked, writes
are refused before they touch anything, and all is well again when it returns.

Outages are simulated the ways a root-run test can (chmod does not stop root):
the store directory renamed away, objects/ or log/ replaced by a file, and a
fault layer that makes every file call under the store fail with EIO.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from outages import OUTAGES, outage

from imstore import Store
from imstore.cache import CacheSettings
from imstore.errors import Unavailable
from imstore.hashing import hash_bytes
from imstore.log import Log


@pytest.fixture
def cache(private_cache_dir: Path) -> CacheSettings:
    return CacheSettings(directory=private_cache_dir)


@pytest.fixture
def filled(store_path: Path, cache: CacheSettings) -> dict:
    """A store with a, b cached (written through the cache) and one version written without it."""
    with Store.open(store_path, cache=cache) as store:
        versions = {
            "a1": store.put("a", b"a one").version,
            "a2": store.put("a", b"a two").version,
            "b1": store.put("b", os.urandom(50_000)).version,
        }
    with Store.open(store_path) as store:
        versions["uncached"] = store.put("c", b"never cached").version
    return versions


def _no_write_may_take_the_lock(monkeypatch) -> None:
    def refuse(self):
        raise AssertionError("a write during an outage reached the log lock instead of failing first")

    monkeypatch.setattr(Log, "locked", refuse)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", OUTAGES)
def test_cached_reads_are_served_verified_and_writes_refused_during_an_outage(kind, store_path, cache, filled, monkeypatch):
    with outage(kind, store_path):
        with Store.open(store_path, cache=cache) as store:
            for name in ("a1", "a2", "b1"):
                expected = filled[name]
                found, reader = store.open_version(expected.key, expected.version)
                data = reader.read()
                assert found == expected and hash_bytes(data) == expected.hash and not found.stale
                assert store.cat(expected.hash) == data
                assert store.cat(expected.hash[:12]) == data
            latest, reader = store.open_version("a")
            assert latest == filled["a2"] and reader.read() == b"a two"
            log_readable = kind == "objects-replaced-by-file"
            assert latest.stale is not log_readable
            assert any("may be stale" in warning for warning in store.warnings) is not log_readable
            with pytest.raises(Unavailable):
                store.get("c", 1)
            if kind.startswith("log-"):  # objects/ is fine: bytes by hash still come from the store
                assert store.cat(filled["uncached"].hash) == b"never cached"
            else:
                with pytest.raises(Unavailable):
                    store.cat(filled["uncached"].hash)
        with Store.open(store_path, cache=cache) as store, monkeypatch.context() as patch:
            _no_write_may_take_the_lock(patch)
            with pytest.raises(Unavailable, match="unavailable|not a directory|Input/output"):
                store.put("a", b"a three")
            with pytest.raises(Unavailable):
                store.delete("b")
    _assert_store_back_and_untouched(store_path, cache, filled)


def _assert_store_back_and_untouched(store_path: Path, cache: CacheSettings, filled: dict) -> None:
    with Store.open(store_path, cache=cache) as store:
        report = store.verify()
        assert report.ok and report.notes == [], report  # no temp file, no stray object
        assert report.records == 4
        found, reader = store.open_version("a")
        assert not found.stale and found.version == 2 and reader.read() == b"a two"
        assert store.get("c", 1) == b"never cached"
        assert store.put("a", b"a three").version.version == 3
        assert store.get("a") == b"a three" and store.warnings == []


@pytest.mark.timeout(60)
def test_a_full_disk_refuses_the_write_and_cached_reads_go_on(store_path, cache, filled, monkeypatch):
    import imstore.objects

    def disk_full(fd, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(imstore.objects, "write_all", disk_full)
    with Store.open(store_path, cache=cache) as store:
        with pytest.raises(Unavailable, match="No space left"):
            store.put("a", b"does not fit")
        assert store.get("a") == b"a two" and store.get("b", 1) and store.warnings == []
    monkeypatch.undo()
    _assert_store_back_and_untouched(store_path, cache, filled)


@pytest.mark.timeout(60)
def test_a_store_object_kept_open_survives_the_outage_and_its_end(store_path, cache, filled):
    """A long-lived Store (a server worker) keeps serving cached versions and writes again afterwards."""
    with Store.open(store_path, cache=cache) as store:
        assert store.get("a", 1) == b"a one"
        with outage("store-renamed", store_path):
            assert store.get("a", 1) == b"a one"
            assert store.cat(filled["a2"].hash) == b"a two"
            with pytest.raises(Unavailable):
                store.put("a", b"refused")
        assert store.put("a", b"after").version.version == 3
    _assert_store_count(store_path, 5)


def _assert_store_count(store_path: Path, records: int) -> None:
    with Store.open(store_path) as store:
        report = store.verify()
        assert report.ok and report.records == records


@pytest.mark.timeout(120)
def test_through_real_processes_stale_warning_exit_6_and_recovery(cli_process, store_path):
    assert cli_process("put", "k", stdin=b"v1").code == 0
    assert cli_process("get", "k").stdout == b"v1"
    aside = store_path.parent / "aside"
    os.rename(store_path, aside)
    try:
        result = cli_process("get", "k")
        assert result.code == 0 and result.stdout == b"v1" and "may be stale" in result.stderr
        refused = cli_process("put", "k", stdin=b"v2")
        assert refused.code == 6 and "unavailable" in refused.stderr and refused.stdout == b""
        assert cli_process("--json", "put", "k", stdin=b"v2").stdout == b""
    finally:
        os.rename(aside, store_path)
    assert cli_process("put", "k", stdin=b"v2").code == 0
    back = cli_process("get", "k")
    assert back.stdout == b"v2" and back.stderr == ""


def test_a_cache_folder_on_a_vanished_disk_is_bypassed(store_path, tmp_path):
    """The cache itself unavailable (its folder replaced by a file) costs nothing but the cache."""
    blocked = tmp_path / "cache-is-a-file"
    blocked.write_bytes(b"")
    with Store.open(store_path, cache=CacheSettings(directory=blocked)) as store:
        store.put("k", b"x")
        assert store.get("k") == b"x" and store.get("k", 1) == b"x"
        assert store.cache.notes
