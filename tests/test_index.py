"""The SQLite index: applying frames, queries, its state, and refusing a foreign schema."""

from __future__ import annotations

import sqlite3

import pytest

from imstore.index import EMPTY_STATE, Index
from imstore.log import GENESIS, Record


def record(seq: int, key: str, version: int, op: str = "put", time_ns: int | None = None, **extra) -> Record:
    return Record(
        seq=seq,
        time_ns=seq * 10 if time_ns is None else time_ns,
        op=op,
        key=key,
        version=version,
        hash=None if op == "delete" else f"{seq:064x}",
        size=0 if op == "delete" else seq,
        content_type=extra.get("content_type"),
        meta=extra.get("meta", {}),
        message=extra.get("message"),
        prev=GENESIS,
        record_hash=bytes([seq]) * 32,
    )


@pytest.fixture
def index(tmp_path):
    opened = Index(tmp_path / "index.sqlite")
    yield opened
    opened.close()


def apply(index: Index, records: list[Record], offset: int, end: int) -> None:
    index.begin()
    index.apply(records, offset, end, b"c" * 16)
    index.commit()


def test_a_new_index_is_empty(index):
    assert index.state() == EMPTY_STATE
    assert index.count() == 0 and index.latest_version("k") is None


def test_apply_records_and_state(index):
    apply(index, [record(1, "a", 1)], 0, 100)
    apply(index, [record(2, "b", 1, meta={"x": "y"}), record(3, "a", 2)], 100, 250)
    state = index.state()
    assert (state.frame_offset, state.log_end, state.seq, state.last_hash) == (100, 250, 3, bytes([3]) * 32)
    assert index.latest_version("a") == (2, "put")
    assert index.count() == 3
    assert index.version("b", 1)[-1] is not None  # packed meta
    assert [row[1] for row in index.history("a")] == [2, 1]
    assert [row[1] for row in index.history("a", limit=1)] == [2]


def test_version_at_picks_the_newest_at_or_before(index):
    apply(index, [record(1, "k", 1, time_ns=100), record(2, "k", 2, time_ns=200), record(3, "k", 3, op="delete", time_ns=300)], 0, 10)
    assert index.version_at("k", 99) is None
    assert index.version_at("k", 100)[1] == 1
    assert index.version_at("k", 250)[1] == 2
    assert index.version_at("k", 10**18)[3] == "delete"


def test_ls_prefix_and_deleted(index):
    records = [record(1, "a/1", 1), record(2, "a/2", 1), record(3, "b", 1), record(4, "a/2", 2, op="delete"), record(5, "a\U0010ffff", 1)]
    apply(index, records, 0, 10)
    assert [row[0] for row in index.ls()] == ["a/1", "a\U0010ffff", "b"]
    assert [row[0] for row in index.ls("a/")] == ["a/1"]
    assert [row[0] for row in index.ls("a/", include_deleted=True)] == ["a/1", "a/2"]
    assert [row[0] for row in index.ls(limit=1)] == ["a/1"]


def test_log_after_and_limit(index):
    apply(index, [record(seq, f"k{seq}", 1) for seq in range(1, 6)], 0, 10)
    assert [row[2] for row in index.log(after=2)] == [3, 4, 5]
    assert [row[2] for row in index.log(after=0, limit=2)] == [1, 2]
    assert index.hashes() == {f"{seq:064x}" for seq in range(1, 6)}


def test_duplicate_versions_are_refused(index):
    apply(index, [record(1, "k", 1)], 0, 10)
    index.begin()
    with pytest.raises(sqlite3.IntegrityError):
        index.apply([record(2, "k", 1)], 10, 20, b"c" * 16)
    index.rollback()
    assert index.count() == 1


def test_clear_forgets_everything(index):
    apply(index, [record(1, "k", 1)], 0, 10)
    index.begin()
    index.clear()
    index.commit()
    assert index.state() == EMPTY_STATE and index.count() == 0 and index.latest_version("k") is None


def test_rollback_discards_uncommitted_records(index):
    index.begin()
    index.apply([record(1, "k", 1)], 0, 10, b"c" * 16)
    index.rollback()
    assert index.count() == 0 and index.state() == EMPTY_STATE


def test_a_foreign_schema_version_is_refused(tmp_path):
    path = tmp_path / "index.sqlite"
    Index(path).close()
    db = sqlite3.connect(path)
    db.execute("UPDATE state SET schema = 99")
    db.commit()
    db.close()
    with pytest.raises(sqlite3.DatabaseError):
        Index(path)


def test_garbage_file_is_a_database_error_and_remove_files_clears_it(tmp_path):
    path = tmp_path / "index.sqlite"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(sqlite3.DatabaseError):
        Index(path)
    Index.remove_files(path)
    assert not path.exists()
    Index(path).close()


def _open_index(path: str) -> str | None:
    try:
        Index(path).close()
        return None
    except Exception as exc:  # handed back to the test: a child's traceback would be lost
        return f"{type(exc).__name__}: {exc}"


def test_processes_opening_a_new_index_at_once_all_succeed(tmp_path):
    # SQLite answers a concurrent switch to WAL "database is locked" at once, without its busy
    # handler: before use_wal, about one round in five here failed a process (the flaky F8 test).
    import multiprocessing

    with multiprocessing.get_context("fork").Pool(8) as pool:
        for round_number in range(20):
            path = str(tmp_path / f"index-{round_number}.sqlite")
            assert pool.map(_open_index, [path] * 8) == [None] * 8
