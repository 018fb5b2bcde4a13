"""import_source and export at the library level: sources, batches, stat cache, errors."""

from __future__ import annotations

import base64
import filecmp
import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from imstore import importer, statcache
from imstore.errors import ImstoreError, InvalidInput
from imstore.exporter import export, unsafe_path_reason
from imstore.importer import import_source


def make_tree(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


TREE = {"a.txt": b"alpha\n", "sub/b.bin": bytes(range(256)) * 40, "sub/deeper/c": b"", "same1": b"dup", "same2": b"dup"}


def record_count(store) -> int:
    return len(store.log_records())


def test_directory_round_trip_is_byte_for_byte(store, tmp_path):
    source = make_tree(tmp_path / "src", TREE)
    summary = import_source(store, str(source), jobs=3)
    assert (summary.added, summary.unchanged, summary.skipped) == (5, 0, 0)
    assert summary.bytes_written == sum(len(v) for v in TREE.values()) - len(b"dup")
    assert summary.bytes_saved == len(b"dup")
    assert sorted(v.key for v in store.ls()) == sorted(TREE)
    export(store, str(tmp_path / "out"))
    comparison = filecmp.dircmp(source, tmp_path / "out")
    assert not comparison.left_only and not comparison.right_only and not comparison.diff_files
    for name, data in TREE.items():
        assert (tmp_path / "out" / name).read_bytes() == data
    assert store.verify().ok


def test_one_import_is_one_log_frame_and_one_pack(store, tmp_path):
    import_source(store, str(make_tree(tmp_path / "src", TREE)))
    frames = list(store.log.scan(0))
    assert len(frames) == 1 and len(frames[0].records) == 5
    assert len(list((store.root / "objects" / "pack").glob("*.idx"))) == 1


def test_prefix_is_prepended_as_given(store, tmp_path):
    import_source(store, str(make_tree(tmp_path / "src", {"x": b"1"})), prefix="p-")
    assert [v.key for v in store.ls()] == ["p-x"]


def test_unchanged_reimport_adds_nothing_and_reads_nothing(store, tmp_path, monkeypatch):
    monkeypatch.setattr(statcache, "RACY_MARGIN_NS", 0)
    source = make_tree(tmp_path / "src", TREE)
    import_source(store, str(source))
    before = record_count(store)
    again = import_source(store, str(source))
    assert (again.added, again.unchanged, again.bytes_read, again.bytes_written) == (0, 5, 0, 0)
    assert record_count(store) == before


def test_files_written_just_before_an_import_are_read_again(store, tmp_path):
    source = make_tree(tmp_path / "src", {"fresh": b"just written"})
    import_source(store, str(source))  # mtime is within the racy margin of the scan
    again = import_source(store, str(source))
    assert again.bytes_read == len(b"just written") and again.unchanged == 1


def test_a_changed_file_adds_exactly_one_version_even_with_the_same_size_and_mtime(store, tmp_path, monkeypatch):
    monkeypatch.setattr(statcache, "RACY_MARGIN_NS", 0)
    source = make_tree(tmp_path / "src", {"keep": b"same", "edit": b"version 1"})
    import_source(store, str(source))
    before = os.stat(source / "edit")
    (source / "edit").write_bytes(b"version 2")  # same size
    os.utime(source / "edit", ns=(before.st_atime_ns, before.st_mtime_ns))  # and the same mtime
    summary = import_source(store, str(source))
    assert (summary.added, summary.unchanged) == (1, 1)
    assert [v.version for v in store.history("edit")] == [1, 2]
    assert store.get("edit") == b"version 2"
    assert [v.version for v in store.history("keep")] == [1]


def test_a_deleted_key_comes_back_with_a_new_version(store, tmp_path):
    source = make_tree(tmp_path / "src", {"k": b"v"})
    import_source(store, str(source))
    store.delete("k")
    assert import_source(store, str(source)).added == 1
    assert [v.op for v in store.history("k")] == ["put", "delete", "put"]


def test_symlinks_are_skipped_with_a_warning_unless_followed_inside_source(store, tmp_path):
    source = make_tree(tmp_path / "src", {"real/f": b"inside"})
    (tmp_path / "outside").write_bytes(b"secret")
    os.symlink("real/f", source / "link-in")
    os.symlink(tmp_path / "outside", source / "link-out")
    os.symlink("real", source / "dirlink")
    os.symlink(".", source / "real" / "loop")
    plain = import_source(store, str(source), prefix="plain/")
    assert [v.key for v in store.ls("plain/")] == ["plain/real/f"]
    assert plain.skipped == 4 and any("link-in" in w and "symlink" in w for w in plain.warnings)
    followed = import_source(store, str(source), prefix="f/", follow_symlinks=True)
    assert sorted(v.key for v in store.ls("f/")) == ["f/dirlink/f", "f/link-in", "f/real/f"]
    assert any("link-out" in w and "outside SOURCE" in w for w in followed.warnings)
    assert any("loop" in w for w in followed.warnings)
    assert b"secret" not in [store.get(v.key) for v in store.ls()]


def test_special_files_are_skipped_with_a_warning(store, tmp_path):
    source = make_tree(tmp_path / "src", {"f": b"x"})
    os.mkfifo(source / "fifo")
    summary = import_source(store, str(source))
    assert summary.added == 1 and summary.skipped == 1 and "fifo" in summary.warnings[0]


def _fail_reading(monkeypatch, victim: str):
    """A fault layer: opening the victim fails with EACCES (tests run as root, so chmod cannot do it)."""
    real_open = os.open

    def faulty_open(path, *args, **kwargs):
        if str(path).endswith(victim):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(importer.os, "open", faulty_open)


@pytest.mark.parametrize("jobs", [1, 4])
def test_an_unreadable_file_aborts_the_import_naming_it_and_commits_nothing(store, tmp_path, monkeypatch, jobs):
    source = make_tree(tmp_path / "src", {f"f{i:02}": f"file {i}".encode() for i in range(30)})
    _fail_reading(monkeypatch, "f17")
    with pytest.raises(ImstoreError, match="f17: cannot read"):
        import_source(store, str(source), jobs=jobs)
    assert record_count(store) == 0
    assert os.listdir(store.root / "objects" / "pack") == []
    assert store.verify().ok


def test_skip_errors_imports_the_rest_atomically(store, tmp_path, monkeypatch):
    source = make_tree(tmp_path / "src", {f"f{i}": f"file {i}".encode() for i in range(5)})
    _fail_reading(monkeypatch, "f3")
    summary = import_source(store, str(source), skip_errors=True)
    assert summary.added == 4 and summary.skipped == 1 and "f3" in summary.warnings[0]
    assert len(list(store.log.scan(0))) == 1


def test_a_file_name_that_is_not_a_valid_key_is_named(store, tmp_path):
    source = make_tree(tmp_path / "src", {"ok": b"1", "tab\there": b"2"})
    with pytest.raises(ImstoreError, match="tab"):
        import_source(store, str(source))
    assert record_count(store) == 0


def test_large_files_are_stored_loose(store, tmp_path, monkeypatch):
    monkeypatch.setattr(importer, "LOOSE_MIN", 1000)
    big = os.urandom(5000)
    import_source(store, str(make_tree(tmp_path / "src", {"big": big, "small": b"s"})))
    assert store.objects.loose_path(store.resolve("big").hash).exists()
    assert store.get("big") == big and store.get("small") == b"s"


def _tar(path: Path, members: dict[str, bytes], mode: str = "w") -> Path:
    with tarfile.open(path, mode) as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                archive.addfile(info)
            else:
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize("suffix, mode", [(".tar", "w"), (".tar.gz", "w:gz"), (".tar.bz2", "w:bz2"), (".tar.xz", "w:xz")])
def test_tar_of_any_compression_imports_and_round_trips(store, tmp_path, suffix, mode):
    members = {"./": None, "./a": b"A", "./dir/": None, "./dir/b": b"B" * 3000, "c": b""}
    archive = _tar(tmp_path / f"in{suffix}", members, mode)
    summary = import_source(store, str(archive))
    assert summary.added == 3
    assert sorted(v.key for v in store.ls()) == ["a", "c", "dir/b"]
    export(store, str(tmp_path / f"out{suffix}"))
    with tarfile.open(tmp_path / f"out{suffix}") as result:
        assert {m.name: result.extractfile(m).read() for m in result.getmembers()} == {"a": b"A", "c": b"", "dir/b": b"B" * 3000}


def test_tar_hard_links_and_symlinks(store, tmp_path):
    path = tmp_path / "links.tar"
    with tarfile.open(path, "w") as archive:
        info = tarfile.TarInfo("data")
        info.size = 4
        archive.addfile(info, io.BytesIO(b"data"))
        hard = tarfile.TarInfo("hard")
        hard.type, hard.linkname = tarfile.LNKTYPE, "data"
        archive.addfile(hard)
        dangling = tarfile.TarInfo("dangling")
        dangling.type, dangling.linkname = tarfile.LNKTYPE, "never-there"
        archive.addfile(dangling)
        soft = tarfile.TarInfo("soft")
        soft.type, soft.linkname = tarfile.SYMTYPE, "/etc/passwd"
        archive.addfile(soft)
    summary = import_source(store, str(path))
    assert store.get("hard") == b"data"
    assert summary.skipped == 2 and "dangling" in summary.warnings[0] and "soft" in summary.warnings[1]


def test_a_damaged_tar_aborts_and_commits_nothing(store, tmp_path):
    archive = _tar(tmp_path / "in.tar.gz", {f"f{i}": os.urandom(2000) for i in range(20)}, "w:gz")
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidInput, match="tar"):
        import_source(store, str(archive))
    assert record_count(store) == 0


def _jsonl(path: Path, lines: list) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def test_json_lines_with_every_kind_of_content(store, tmp_path):
    (tmp_path / "file.bin").write_bytes(b"\x00from a file")
    source = _jsonl(
        tmp_path / "in.jsonl",
        [
            {"key": "text", "content": "h\u00e9llo", "content_type": "text/plain", "meta": {"lang": "fr"}, "message": "first"},
            {"key": "b64", "content_b64": base64.b64encode(b"\xff\xfe").decode()},
            {"key": "file", "path": "file.bin"},
            "",
            {"key": "text", "content": "second version"},
        ],
    )
    summary = import_source(store, str(source), message="batch message")
    assert summary.added == 4
    first, second = store.history("text")
    assert (first.content_type, first.meta, first.message) == ("text/plain", {"lang": "fr"}, "first")
    assert second.message == "batch message"
    assert store.get("text", 1) == "h\u00e9llo".encode() and store.get("text") == b"second version"
    assert store.get("b64") == b"\xff\xfe" and store.get("file") == b"\x00from a file"


MALFORMED = [
    ("{not json", "not valid JSON"),
    ('["a list"]', "must be a JSON object"),
    ({"content": "no key"}, '"key" must be a string'),
    ({"key": "k", "content": "x", "path": "y"}, "exactly one of"),
    ({"key": "k"}, "exactly one of"),
    ({"key": "k", "content": "x", "colour": "blue"}, "unknown fields"),
    ({"key": "k", "content_b64": "%%%"}, "bad content_b64"),
    ({"key": "k", "path": "missing-file"}, "cannot read"),
    ({"key": "k", "path": "."}, "not a regular file"),
    ({"key": "k", "content": 5}, "must be a string"),
    ({"key": "k", "content": "x", "meta": {"a": 1}}, "metadata"),
    ({"key": "", "content": "x"}, "key"),
    ({"key": "k", "content": "\ud800"}, "bad content"),
]


@pytest.mark.parametrize("bad_line, reason", MALFORMED)
def test_a_malformed_json_line_aborts_naming_the_line(store, tmp_path, bad_line, reason):
    source = _jsonl(tmp_path / "in.jsonl", [{"key": "good", "content": "fine"}, bad_line, {"key": "after", "content": "x"}])
    with pytest.raises(ImstoreError) as raised:
        import_source(store, str(source))
    assert "line 2" in str(raised.value) and reason in str(raised.value)
    assert record_count(store) == 0
    skipped = import_source(store, str(source), skip_errors=True)
    assert skipped.added == 2 and skipped.skipped == 1


def test_stdin_is_json_lines_when_it_starts_with_a_brace_else_a_tar(store, tmp_path):
    import_source(store, "-", stdin=io.BytesIO(b'{"key": "j", "content": "json"}\n'))
    tar_bytes = _tar(tmp_path / "t.tar", {"./t": b"tar"}).read_bytes()
    import_source(store, "-", stdin=io.BytesIO(tar_bytes), prefix="s/")
    assert store.get("j") == b"json" and store.get("s/t") == b"tar"
    with pytest.raises(InvalidInput, match="empty"):
        import_source(store, "-", stdin=io.BytesIO(b""))
    with pytest.raises(InvalidInput, match="tar"):
        import_source(store, "-", stdin=io.BytesIO(b"neither a tar nor json"))


def test_a_source_that_is_none_of_the_kinds_is_refused(store, tmp_path):
    (tmp_path / "notes.txt").write_text("plain text")
    with pytest.raises(InvalidInput, match="not a directory, a tar"):
        import_source(store, str(tmp_path / "notes.txt"))
    with pytest.raises(InvalidInput, match="no such"):
        import_source(store, str(tmp_path / "missing"))


def test_a_broken_stat_cache_is_rebuilt_not_fatal(store, tmp_path, monkeypatch):
    monkeypatch.setattr(statcache, "RACY_MARGIN_NS", 0)
    source = make_tree(tmp_path / "src", {"x": b"1"})
    cache_file = statcache.StatCache(store.root, os.path.realpath(source)).path
    cache_file.parent.mkdir()
    cache_file.write_bytes(b"\xc1 this is not msgpack" * 100)
    assert import_source(store, str(source)).added == 1
    assert import_source(store, str(source)).bytes_read == 0  # rebuilt, and used again


@pytest.mark.parametrize(
    "key, unsafe",
    [("a/b", False), ("a\\b", False), ("..x", False), ("", True), ("/abs", True), ("../x", True), ("a/../b", True),
     ("a/./b", True), ("a//b", True), ("a/", True), (".", True), ("a\x00b", True)],
)  # fmt: skip
def test_unsafe_export_paths(key, unsafe):
    assert (unsafe_path_reason(key) is not None) == unsafe


def test_export_at_a_time_and_with_a_prefix(store, tmp_path):
    store.put("p/a", b"old")
    moment = store.resolve("p/a").time_ns
    store.put("p/a", b"new")
    store.put("p/b", b"later")
    store.put("q", b"other prefix")
    export(store, str(tmp_path / "then"), prefix="p/", at=moment)
    assert sorted(str(p.relative_to(tmp_path / "then")) for p in (tmp_path / "then").rglob("*") if p.is_file()) == ["p/a"]
    assert (tmp_path / "then" / "p" / "a").read_bytes() == b"old"
    store.delete("p/b")
    export(store, str(tmp_path / "now"), prefix="p/")
    assert (tmp_path / "now" / "p" / "a").read_bytes() == b"new" and not (tmp_path / "now" / "p" / "b").exists()


def test_exported_files_carry_the_version_time_as_mtime(store, tmp_path):
    store.put("dated", b"x")
    export(store, str(tmp_path / "out"))
    assert os.stat(tmp_path / "out" / "dated").st_mtime_ns == store.resolve("dated").time_ns


def test_a_large_batch_sees_every_latest_version(store, tmp_path):
    # More than 2000 keys take the index's range-scan path; keys inside the range but not in the batch stay out.
    store.put("d/f0500x", b"not part of the import")
    source = make_tree(tmp_path / "src", {f"f{number:04}": b"%d" % number for number in range(2100)})
    assert import_source(store, str(source), prefix="d/").added == 2100
    (source / "f1234").write_bytes(b"changed")
    summary = import_source(store, str(source), prefix="d/")
    assert (summary.added, summary.unchanged) == (1, 2099)
    assert [v.version for v in store.history("d/f1234")] == [1, 2]
    assert store.get("d/f0500x") == b"not part of the import"


# ------------------------------------------------------------ the "all latest at" fast path of the stat cache
def _count_latest_lookups(store, monkeypatch) -> list[int]:
    """How many keys each latest_contents call asked the index about."""
    asked: list[int] = []
    real = store.latest_contents

    def counting(keys):
        keys = list(keys)
        asked.append(len(keys))
        return real(keys)

    monkeypatch.setattr(store, "latest_contents", counting)
    return asked


def test_a_reimport_while_the_store_is_unchanged_asks_the_index_about_no_key(store, tmp_path, monkeypatch):
    monkeypatch.setattr(statcache, "RACY_MARGIN_NS", 0)
    source = make_tree(tmp_path / "src", TREE)
    import_source(store, str(source))
    asked = _count_latest_lookups(store, monkeypatch)
    again = import_source(store, str(source))
    assert (again.added, again.unchanged, again.bytes_read) == (0, 5, 0)
    assert asked == [0]


@pytest.mark.parametrize("change", ["put", "delete", "put other key"])
def test_any_write_to_the_store_makes_the_next_reimport_check_the_index(store, tmp_path, monkeypatch, change):
    monkeypatch.setattr(statcache, "RACY_MARGIN_NS", 0)
    source = make_tree(tmp_path / "src", {"a": b"file a", "b": b"file b"})
    import_source(store, str(source))
    if change == "put":
        store.put("a", b"written by someone else")
    elif change == "delete":
        store.delete("a")
    else:
        store.put("elsewhere", b"x")
    asked = _count_latest_lookups(store, monkeypatch)
    summary = import_source(store, str(source))
    assert asked[0] == 2  # every key looked up: the cache's "all latest" no longer holds
    assert summary.added == (0 if change == "put other key" else 1)
    assert store.get("a") == b"file a" and store.get("b") == b"file b"
    third = import_source(store, str(source))  # and the fast path is back
    assert (third.added, third.unchanged) == (0, 2)


def test_a_different_prefix_is_not_covered_by_the_fast_path(store, tmp_path, monkeypatch):
    monkeypatch.setattr(statcache, "RACY_MARGIN_NS", 0)
    source = make_tree(tmp_path / "src", {"a": b"1"})
    import_source(store, str(source), prefix="one/")
    summary = import_source(store, str(source), prefix="two/")
    assert summary.added == 1 and store.get("two/a") == b"1"


def test_a_failed_commit_leaves_no_claim_that_files_are_latest(store, tmp_path, monkeypatch):
    monkeypatch.setattr(statcache, "RACY_MARGIN_NS", 0)
    source = make_tree(tmp_path / "src", {"a": b"version 1", "b": b"b"})
    import_source(store, str(source))
    (source / "a").write_bytes(b"version 2")
    real = store.import_batch

    def failing(*args, **kwargs):
        raise InvalidInput("injected commit failure")

    monkeypatch.setattr(store, "import_batch", failing)
    with pytest.raises(InvalidInput):
        import_source(store, str(source))  # read a's new bytes (and cached their hash) but committed nothing
    monkeypatch.setattr(store, "import_batch", real)
    summary = import_source(store, str(source))
    assert summary.added == 1 and store.get("a") == b"version 2"


def test_files_that_failed_under_skip_errors_are_read_next_time(store, tmp_path, monkeypatch):
    monkeypatch.setattr(statcache, "RACY_MARGIN_NS", 0)
    source = make_tree(tmp_path / "src", {"a": b"a", "flaky": b"secret"})
    import_source(store, str(source))
    (source / "flaky").write_bytes(b"secret 2")
    real = importer._read_file

    def failing_once(item, store):
        if item.key == "flaky":
            raise importer.ItemError("flaky: Input/output error")
        return real(item, store)

    monkeypatch.setattr(importer, "_read_file", failing_once)
    first = import_source(store, str(source), skip_errors=True)
    assert (first.added, first.skipped) == (0, 1)
    monkeypatch.setattr(importer, "_read_file", real)
    second = import_source(store, str(source))
    assert (second.added, second.unchanged) == (1, 1) and store.get("flaky") == b"secret 2"


def test_files_left_out_of_an_import_lose_their_cache_entries(store, tmp_path, monkeypatch):
    # Without --follow-symlinks the files behind a link are not part of the import. If their entries
    # stayed, the next import that follows the link would trust them although their keys changed since.
    monkeypatch.setattr(statcache, "RACY_MARGIN_NS", 0)
    source = make_tree(tmp_path / "src", {"real/f": b"content"})
    (source / "link").symlink_to("real")
    import_source(store, str(source), follow_symlinks=True)
    assert store.get("link/f") == b"content"
    store.put("link/f", b"changed by someone else")
    import_source(store, str(source))  # the link is not followed: link/f is not in this import
    summary = import_source(store, str(source), follow_symlinks=True)
    assert summary.added == 1 and store.get("link/f") == b"content"


@pytest.mark.parametrize("meanwhile_b", [None, b"file b, changed"])
def test_a_write_by_someone_else_during_an_import_is_not_covered_by_the_fast_path(store_path, store, tmp_path, monkeypatch, meanwhile_b):
    # Another process writes key a while this import reads b. The import commits b after that write, so
    # "every file is its key's latest at the commit's position" is false for a (its file still holds "file a").
    # meanwhile_b: the other process also wrote b's new bytes, so this import's commit has nothing to append.
    monkeypatch.setattr(statcache, "RACY_MARGIN_NS", 0)
    source = make_tree(tmp_path / "src", {"a": b"file a", "b": b"file b"})
    import_source(store, str(source))
    (source / "b").write_bytes(b"file b, changed")
    done = []

    def other_process_writes(*_):
        if not done:
            from imstore import Store

            with Store.open(store_path) as other:
                other.put("a", b"written by someone else")
                if meanwhile_b is not None:
                    other.put("b", meanwhile_b)
            done.append(True)

    import_source(store, str(source), jobs=1, progress=other_process_writes)
    assert done and store.get("a") == b"written by someone else"
    again = import_source(store, str(source))
    assert again.added == 1 and store.get("a") == b"file a"
