"""imstore import / export / repack through the CLI, hostile inputs, and kill -9 during an import."""

from __future__ import annotations

import io
import json
import os
import random
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from imstore import Store

IMSTORE = [sys.executable, "-m", "imstore"]


def make_tree(root: Path, count: int, size: int = 64) -> Path:
    for number in range(count):
        path = root / f"d{number % 10}" / f"f{number}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(f"{number}:".encode() + os.urandom(size))
    return root


def tar_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def files_under(root: Path) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes() for path in root.rglob("*") if path.is_file()}


def test_import_then_export_round_trips_a_tree_with_a_json_summary(cli, tmp_path):
    source = make_tree(tmp_path / "src", 40)
    result = cli("--json", "import", str(source), "--prefix", "t/", "-m", "first")
    assert result.code == 0, result.stderr
    summary = json.loads(result.out)
    assert summary["added"] == 40 and summary["unchanged"] == 0 and summary["skipped"] == 0
    assert set(summary) >= {"added", "unchanged", "skipped", "bytes_written", "bytes_saved"}
    again = json.loads(cli("import", str(source), "--prefix", "t/", "--json").out)
    assert again["added"] == 0 and again["unchanged"] == 40
    assert cli("export", str(tmp_path / "out"), "--prefix", "t/").code == 0
    assert files_under(tmp_path / "out" / "t") == files_under(source)
    assert json.loads(cli("history", "t/d3/f3", "--json").out)[0]["message"] == "first"


def test_import_without_json_prints_one_summary_line_and_nothing_on_a_pipe_stderr(cli, tmp_path):
    result = cli("import", str(make_tree(tmp_path / "src", 3)))
    assert result.code == 0
    assert result.out.startswith("added 3\tunchanged 0\tskipped 0")
    assert result.stderr == ""  # no progress bar when stderr is not a terminal


def test_tar_and_json_lines_on_stdin(cli):
    assert cli("import", "-", "--prefix", "tar/", stdin=tar_bytes({"./a": b"A", "b/c": b"C"})).code == 0
    lines = b'{"key": "j1", "content": "one"}\n{"key": "j2", "content_b64": "dHdv"}\n'
    assert cli("import", "-", stdin=lines).code == 0
    assert cli("get", "tar/a").stdout == b"A" and cli("get", "tar/b/c").stdout == b"C"
    assert cli("get", "j2").stdout == b"two"


def test_a_malformed_json_line_is_exit_2_naming_the_line_and_commits_nothing(cli):
    lines = b'{"key": "ok", "content": "x"}\n{"key": "bad", "content": \n'
    result = cli("import", "-", stdin=lines)
    assert result.code == 2 and "stdin line 2" in result.stderr
    assert cli("ls").out == ""
    skipped = cli("import", "-", "--skip-errors", stdin=lines)
    assert skipped.code == 0 and "line 2" in skipped.stderr
    assert cli("ls").out.startswith("ok\t1")


def test_an_unreadable_file_aborts_the_import(cli, tmp_path):
    # Tests run as root, so chmod blocks nothing: a JSONL "path" naming a FIFO is a file that cannot be read.
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "in.jsonl").write_text('{"key": "a", "content": "x"}\n{"key": "b", "path": "fifo"}\n')
    result = cli("import", str(tmp_path / "in.jsonl"))
    assert result.code != 0 and "in.jsonl line 2" in result.stderr and "not a regular file" in result.stderr
    assert cli("ls").out == ""
    assert cli("verify").code == 0


def test_export_to_tar_files_and_stdout(cli, tmp_path):
    cli("import", "-", stdin=tar_bytes({"x/one": b"1", "x/two": b"22", "y": b"3"}))
    for name in ("out.tar", "out.tar.gz", "out.tgz", "out.tar.bz2", "out.tar.xz"):
        assert cli("export", str(tmp_path / name), "--prefix", "x/").code == 0
        with tarfile.open(tmp_path / name) as archive:
            assert {m.name: archive.extractfile(m).read() for m in archive} == {"x/one": b"1", "x/two": b"22"}
    streamed = cli("export", "-")
    assert streamed.code == 0
    with tarfile.open(fileobj=io.BytesIO(streamed.stdout)) as archive:
        assert sorted(archive.getnames()) == ["x/one", "x/two", "y"]


def test_export_at_a_time(cli, tmp_path):
    cli("put", "k", stdin=b"old")
    moment = json.loads(cli("history", "k", "--json").out)[0]["time"]
    cli("put", "k", stdin=b"new")
    cli("export", str(tmp_path / "then"), "--at", moment)
    assert (tmp_path / "then" / "k").read_bytes() == b"old"
    assert cli("export", str(tmp_path / "bad"), "--at", "yesterday").code == 2


HOSTILE = ["../escape", "/abs/x", "a/../../escape2", "./dot", "a//b", "trailing/", "..", "ok/..", "x/./y"]


def test_hostile_tar_members_import_as_keys_and_never_export_outside_dest(cli, tmp_path):
    members = {name: name.encode() for name in HOSTILE} | {"safe/file": b"safe"}
    assert cli("import", "-", stdin=tar_bytes(members)).code == 0
    assert "../escape" in cli("ls").out and "/abs/x" in cli("ls").out
    (tmp_path / "box").mkdir()
    dest = tmp_path / "box" / "dest"
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    result = cli("export", str(dest))
    assert result.code == 0
    after = sorted(str(p) for p in tmp_path.rglob("*"))
    new = [path for path in after if path not in before]
    assert new and all(path.startswith(str(dest)) for path in new), new
    assert files_under(dest) == {"safe/file": b"safe", "dot": b"./dot"}  # './dot' was imported as 'dot'
    for name in HOSTILE:
        if name != "./dot":
            assert repr(name) in result.stderr, name
    assert not Path("/abs/x").exists()
    strict = cli("export", str(tmp_path / "box" / "strict"), "--strict")
    assert strict.code == 1 and "--strict" in strict.stderr
    streamed = cli("export", "-")
    with tarfile.open(fileobj=io.BytesIO(streamed.stdout)) as archive:
        assert sorted(archive.getnames()) == ["dot", "safe/file"]


def test_a_symlink_inside_dest_does_not_lead_export_outside(cli, tmp_path):
    cli("put", "link/planted", stdin=b"should not escape")
    cli("put", "plain", stdin=b"fine")
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    os.symlink(outside, dest / "link")
    result = cli("export", str(dest))
    assert result.code == 0 and "link/planted" in result.stderr
    assert list(outside.iterdir()) == []
    assert (dest / "plain").read_bytes() == b"fine"


def test_a_key_that_is_both_a_file_and_a_directory_is_skipped_with_a_warning(cli, tmp_path):
    cli("put", "a", stdin=b"file")
    cli("put", "a/b", stdin=b"nested")
    result = cli("export", str(tmp_path / "out"))
    assert (tmp_path / "out" / "a").read_bytes() == b"file"
    assert "'a/b'" in result.stderr


def test_packed_objects_are_served_by_get_cat_and_verify_and_repack_keeps_them(cli, tmp_path):
    for batch in range(3):
        cli("import", "-", "--prefix", f"b{batch}/", stdin=tar_bytes({"f": f"batch {batch}".encode()}))
    object_hash = json.loads(cli("ls", "b1/", "--json").out)[0]["hash"]
    assert cli("cat", object_hash[:10]).stdout == b"batch 1"
    repacked = cli("repack", "--json")
    assert repacked.code == 0 and json.loads(repacked.out)["packs_merged"] == 3
    assert cli("get", "b2/f").stdout == b"batch 2"
    assert cli("verify").code == 0


def test_a_damaged_pack_is_exit_5_on_get_and_verify(cli, store_path):
    cli("import", "-", stdin=tar_bytes({"f": b"precious bytes"}))
    pack = next((store_path / "objects" / "pack").glob("*.pack"))
    os.chmod(pack, 0o644)
    data = bytearray(pack.read_bytes())
    data[10] ^= 1
    pack.write_bytes(bytes(data))
    result = cli("get", "f")
    assert result.code == 5 and result.stdout == b""
    assert cli("verify").code == 5
    assert cli("export", str(store_path.parent / "out")).code == 5


def test_the_import_command_does_not_load_rich_or_the_importer_for_other_commands():
    lazy = "('imstore.importer', 'imstore.sources', 'imstore.statcache', 'imstore.exporter', 'rich')"
    code = f"import sys, imstore.cli; print(sorted(m for m in {lazy} if m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "[]"


# ============================================================ kill -9 during an import
def _one_killed_import(store_path: Path, source: Path, prefix: str, delay: float) -> None:
    process = subprocess.Popen(
        [*IMSTORE, "--store", str(store_path), "import", str(source), "--prefix", prefix],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(delay)  # the random instant of the kill, not a wait for a condition
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)


def _check_all_or_nothing(store_path: Path, prefixes: list[str], count: int) -> list[int]:
    with Store.open(store_path) as store:
        seen = [len(store.ls(prefix)) for prefix in prefixes]
        assert all(number in (0, count) for number in seen), seen
        report = store.verify()
        assert report.ok, report.problems
    return seen


def _timed_import(store_path: Path, source: Path, prefix: str) -> float:
    """One uninterrupted import: how long a whole import takes on this machine right now."""
    start = time.monotonic()
    subprocess.run([*IMSTORE, "--store", str(store_path), "import", str(source), "--prefix", prefix], check=True, capture_output=True)
    return time.monotonic() - start


def _kill_at_random_instants(store_path: Path, source: Path, files: int, runs: int) -> list[int]:
    """Kill imports at random instants spread over a whole import's duration; each must be all or nothing."""
    duration = _timed_import(store_path, source, "full/")
    rng = random.Random()
    prefixes = [f"run{number}/" for number in range(runs)]
    for prefix in prefixes:
        _one_killed_import(store_path, source, prefix, rng.uniform(0.05, 1.3) * duration)
    seen = _check_all_or_nothing(store_path, ["full/", *prefixes], files)
    with Store.open(store_path) as store:
        assert all(len(frame.records) == files for frame in store.log.scan(0)), "a batch was split across frames"
    print(f"imports of {duration:.2f} s killed at random instants: {sum(1 for n in seen[1:] if n)} of {runs} had committed")
    return seen


@pytest.mark.timeout(300)
def test_kill_9_at_random_instants_leaves_all_or_nothing(store_path, tmp_path):
    _kill_at_random_instants(store_path, make_tree(tmp_path / "src", 300, size=2048), 300, runs=8)  # 20 in the slow suite


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_kill_9_at_20_random_instants_slow(store_path, tmp_path):
    _kill_at_random_instants(store_path, make_tree(tmp_path / "src", 1000, size=4096), 1000, runs=20)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("step", ["pack-fsynced", "pack-renamed", "pack-installed", "log-written", "log-fsynced"])
def test_a_crash_at_each_step_of_an_import_is_all_or_nothing(store_path, tmp_path, step):
    source = make_tree(tmp_path / "src", 20)
    crashed = subprocess.run(
        [*IMSTORE, "--store", str(store_path), "import", str(source)],
        env={**os.environ, "IMSTORE_CRASH_AT": step},
        capture_output=True,
        timeout=60,
    )
    assert crashed.returncode == -signal.SIGKILL
    with Store.open(store_path) as store:
        # After the frame's write() a process crash keeps it whole (the page cache survives): all of it.
        assert len(store.ls()) == (20 if step.startswith("log-") else 0)
        assert store.verify().ok
    retried = subprocess.run([*IMSTORE, "--store", str(store_path), "import", str(source)], capture_output=True, timeout=60)
    assert retried.returncode == 0
    with Store.open(store_path) as store:
        assert len(store.ls()) == 20 and store.verify().ok


def test_export_of_a_version_whose_object_is_missing_is_damage_exit_5_as_get_says(cli, store_path, tmp_path):
    """The log says the bytes were stored: their absence is damage (exit 5) from every command, not "not found"."""
    assert cli("put", "a", stdin=b"hello").code == 0
    with Store.open(store_path) as store:
        os.unlink(store.objects.loose_path(store.resolve("a").hash))
    assert cli("--no-cache", "get", "a").code == 5
    for target in (tmp_path / "out", tmp_path / "out.tar"):
        result = cli("--no-cache", "export", str(target))
        assert result.code == 5 and "missing from the store" in result.stderr, result.stderr
