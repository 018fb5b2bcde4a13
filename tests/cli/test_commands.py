"""The CLI's commands: output, --json field names, exit codes, nothing written on failure."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from imstore import Store
from tests.conftest import run_cli_in_process

PUT_FIELDS = {"key", "version", "hash", "size", "unchanged"}
HISTORY_FIELDS = {"version", "op", "hash", "size", "time", "content_type", "message"}
LS_FIELDS = {"key", "version", "hash", "size", "time"}
LOG_FIELDS = {"seq", "op", "key", "version", "hash", "size", "time"}


def versions_in(store_path: Path) -> int:
    with Store.open(store_path) as store:
        return len(store.log_records())


def test_put_from_stdin_prints_key_version_hash_size_and_new(cli):
    result = cli("put", "k", stdin=b"hello")
    assert result.code == 0, result.stderr
    key, version, object_hash, size, status = result.out.rstrip("\n").split("\t")
    assert (key, version, size, status) == ("k", "1", "5", "new")
    assert len(object_hash) == 64


def test_put_from_a_file_and_from_dash(cli, tmp_path):
    source = tmp_path / "f.bin"
    source.write_bytes(b"\x00\x01binary\xff")
    assert cli("put", "k", str(source)).code == 0
    assert cli("get", "k").stdout == b"\x00\x01binary\xff"
    assert cli("put", "k", "-", stdin=b"from dash").code == 0
    assert cli("get", "k").stdout == b"from dash"


def test_put_json_has_exactly_the_documented_fields(cli):
    first = json.loads(cli("put", "k", "--json", stdin=b"a").stdout)
    again = json.loads(cli("--json", "put", "k", stdin=b"a").stdout)
    assert set(first) == PUT_FIELDS
    assert first["unchanged"] is False and again["unchanged"] is True
    assert again["version"] == first["version"] == 1 and again["hash"] == first["hash"]


def test_empty_content_is_a_valid_version(cli):
    assert cli("put", "empty", stdin=b"").code == 0
    result = cli("get", "empty")
    assert result.code == 0 and result.stdout == b""


def test_identical_put_is_unchanged_and_adds_no_version(cli, store_path):
    cli("put", "k", stdin=b"same")
    result = cli("put", "k", stdin=b"same")
    assert result.out.rstrip().endswith("unchanged")
    assert versions_in(store_path) == 1


def test_put_after_delete_is_a_new_version_even_with_the_same_bytes(cli):
    cli("put", "k", stdin=b"same")
    cli("rm", "k")
    result = json.loads(cli("put", "k", "--json", stdin=b"same").stdout)
    assert result["version"] == 3 and result["unchanged"] is False


def test_if_absent_fails_with_exit_4_when_the_key_exists_and_writes_nothing(cli, store_path):
    assert cli("put", "k", "--if-absent", stdin=b"one").code == 0
    result = cli("put", "k", "--if-absent", stdin=b"two")
    assert result.code == 4 and "if-absent" in result.stderr
    assert versions_in(store_path) == 1
    cli("rm", "k")
    assert cli("put", "k", "--if-absent", stdin=b"three").code == 0


def test_if_version_compares_with_the_latest_version_including_tombstones(cli, store_path):
    assert cli("put", "k", "--if-version", "0", stdin=b"one").code == 0
    assert cli("put", "k", "--if-version", "0", stdin=b"two").code == 4
    assert cli("put", "k", "--if-version", "1", stdin=b"two").code == 0
    assert cli("rm", "k", "--if-version", "1").code == 4
    assert cli("rm", "k", "--if-version", "2").code == 0
    assert cli("put", "k", "--if-version", "3", stdin=b"back").code == 0
    assert versions_in(store_path) == 4


def test_get_reads_latest_a_numbered_version_and_writes_a_file(cli, tmp_path):
    cli("put", "k", stdin=b"one")
    cli("put", "k", stdin=b"two")
    assert cli("get", "k").stdout == b"two"
    assert cli("get", "k", "--version", "1").stdout == b"one"
    target = tmp_path / "out.txt"
    assert cli("get", "k", "-V", "1", "-o", str(target)).code == 0
    assert target.read_bytes() == b"one"


def test_get_at_a_time_picks_the_version_current_then(cli, store_path):
    cli("put", "k", stdin=b"one")
    cli("put", "k", stdin=b"two")
    with Store.open(store_path) as store:
        first, second = store.history("k")
    from imstore.validate import format_time

    assert cli("get", "k", "--at", format_time(first.time_ns)).stdout == b"one"
    assert cli("get", "k", "--at", format_time(second.time_ns + 1_000_000)).stdout == b"two"
    assert cli("get", "k", "--at", "2000-01-01T00:00:00Z").code == 3
    assert cli("get", "k", "--at", "yesterday").code == 2
    assert cli("get", "k", "--at", "2030-01-01T00:00:00+02:00").stdout == b"two"


def test_get_with_both_version_and_at_is_a_usage_error(cli):
    cli("put", "k", stdin=b"one")
    result = cli("get", "k", "--version", "1", "--at", "2030-01-01T00:00:00Z")
    assert result.code == 2 and result.stdout == b""


def test_deleted_key_is_exit_3_but_old_versions_stay_readable(cli):
    cli("put", "k", stdin=b"one")
    removed = cli("rm", "k", "-m", "bye")
    assert removed.code == 0 and removed.out.split("\t")[:2] == ["k", "2"]
    result = cli("get", "k")
    assert result.code == 3 and "deleted" in result.stderr and result.stdout == b""
    assert cli("get", "k", "--version", "1").stdout == b"one"
    assert cli("get", "k", "--version", "2").code == 3


def test_rm_of_a_missing_or_deleted_key_is_exit_3_and_appends_nothing(cli, store_path):
    assert cli("rm", "nothing").code == 3
    cli("put", "k", stdin=b"x")
    cli("rm", "k")
    assert cli("rm", "k").code == 3
    assert versions_in(store_path) == 2


def test_version_past_the_newest_is_exit_3_and_bad_versions_are_exit_2(cli):
    cli("put", "k", stdin=b"x")
    assert cli("get", "k", "--version", "2").code == 3
    for bad in ("0", "-1", "one", "1.5", ""):
        assert cli("get", "k", "--version", bad).code == 2, bad


def test_cat_by_full_hash_and_by_prefix(cli):
    object_hash = json.loads(cli("put", "k", "--json", stdin=b"catme").stdout)["hash"]
    assert cli("cat", object_hash).stdout == b"catme"
    assert cli("cat", object_hash[:8]).stdout == b"catme"
    assert cli("cat", object_hash[:8].upper()).stdout == b"catme"
    assert cli("cat", "0" * 64).code == 3
    assert cli("cat", "abc").code == 2
    assert cli("cat", "zzzzzzzz").code == 2


def test_history_lists_every_version_oldest_first_with_limit_giving_the_newest(cli):
    for text in (b"a", b"b", b"c"):
        cli("put", "k", "-m", text.decode(), stdin=text)
    cli("rm", "k")
    lines = cli("history", "k").out.splitlines()
    assert [line.split("\t")[0] for line in lines] == ["1", "2", "3", "4"]
    assert lines[0].split("\t")[2] == "put" and lines[3].split("\t")[2] == "delete"
    assert lines[0].split("\t")[6] == "a"
    entries = json.loads(cli("history", "k", "--limit", "2", "--json").stdout)
    assert [entry["version"] for entry in entries] == [3, 4]
    assert all(set(entry) == HISTORY_FIELDS for entry in entries)
    assert entries[1]["op"] == "delete" and entries[1]["hash"] is None
    assert cli("history", "missing").code == 3


def test_ls_shows_live_keys_under_a_prefix_and_deleted_ones_with_all(cli):
    cli("put", "a/1", stdin=b"1")
    cli("put", "a/2", stdin=b"2")
    cli("put", "b/1", stdin=b"3")
    cli("rm", "a/2")
    assert [line.split("\t")[0] for line in cli("ls").out.splitlines()] == ["a/1", "b/1"]
    assert [line.split("\t")[0] for line in cli("ls", "a/").out.splitlines()] == ["a/1"]
    everything = json.loads(cli("ls", "--all", "--json").stdout)
    assert [entry["key"] for entry in everything] == ["a/1", "a/2", "b/1"]
    assert all(set(entry) == LS_FIELDS for entry in everything)


def test_log_lists_records_in_order_with_after_and_limit(cli):
    for key in ("x", "y", "z"):
        cli("put", key, stdin=key.encode())
    records = json.loads(cli("log", "--json").stdout)
    assert [record["seq"] for record in records] == [1, 2, 3]
    assert all(set(record) == LOG_FIELDS for record in records)
    assert [r["key"] for r in json.loads(cli("log", "--after", "1", "--limit", "1", "--json").stdout)] == ["y"]
    assert cli("log").out.splitlines()[0].split("\t")[:3] == ["1", "put", "x"]


def test_output_flags_work_after_the_command_and_values_that_look_like_flags_stay_values(cli):
    result = cli("put", "k", "-m", "--json", stdin=b"x")
    assert result.code == 0 and not result.out.startswith("{")
    assert json.loads(cli("history", "k", "--json").stdout)[0]["message"] == "--json"
    assert cli("put", "k2", "-q", stdin=b"x").out == ""


def test_fields_with_tabs_or_newlines_stay_on_one_line(cli):
    cli("put", "k", "-m", "two\nlines\tand tab", stdin=b"x")
    lines = cli("history", "k").out.splitlines()
    assert len(lines) == 1 and lines[0].split("\t")[6] == "two\\nlines\\tand tab"


def test_errors_are_one_line_on_stderr_and_json_stdout_stays_empty(cli):
    result = cli("get", "missing", "--json")
    assert result.code == 3 and result.stdout == b""
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_no_color_or_table_decoration_on_a_pipe(cli):
    cli("put", "k", stdin=b"x")
    for command in (["ls"], ["history", "k"], ["log"]):
        out = cli(*command).out
        assert "\x1b[" not in out and "│" not in out and "\t" in out


def test_verify_is_clean_then_names_a_damaged_object_with_exit_5(cli, store_path):
    object_hash = json.loads(cli("put", "k", "--json", stdin=b"precious").stdout)["hash"]
    assert cli("verify").code == 0
    path = store_path / "objects" / object_hash[:2] / object_hash[2:]
    os.chmod(path, 0o644)
    path.write_bytes(b"tampered")
    result = cli("verify", "--json")
    report = json.loads(result.stdout)
    assert result.code == 5 and report["ok"] is False
    assert any(object_hash in problem for problem in report["problems"])


@pytest.mark.parametrize("size", [10, 9 << 20])
def test_get_of_a_damaged_object_is_exit_5_and_writes_nothing_to_stdout(cli, store_path, tmp_path, size):
    payload = os.urandom(size)
    object_hash = json.loads(cli("put", "k", "--json", stdin=payload).stdout)["hash"]
    path = store_path / "objects" / object_hash[:2] / object_hash[2:]
    os.chmod(path, 0o644)
    damaged = bytearray(payload)
    damaged[-1] ^= 0xFF
    path.write_bytes(bytes(damaged))
    # --no-cache: the read cache would answer with its own verified copy (F5 allows that; see test_cache.py)
    result = cli("--no-cache", "get", "k")
    assert result.code == 5 and result.stdout == b""
    target = tmp_path / "out"
    assert cli("--no-cache", "get", "k", "-o", str(target)).code == 5
    assert not target.exists() and list(tmp_path.glob(".out*")) == []


def test_reindex_rebuilds_the_index_from_the_log(cli, store_path):
    cli("put", "k", stdin=b"x")
    cli("put", "k", stdin=b"y")
    (store_path / "index.sqlite").write_bytes(b"garbage, not a database")
    result = cli("reindex", "--json")
    assert result.code == 0 and json.loads(result.stdout) == {"records": 2}
    assert cli("get", "k", "--version", "1").stdout == b"x"


def test_an_explicit_store_that_holds_no_store_is_exit_10_with_a_hint(tmp_path):
    result = run_cli_in_process(["--store", str(tmp_path / "nowhere"), "put", "k"], stdin=b"x")
    assert result.code == 10 and "imstore init" in result.stderr
    assert not (tmp_path / "nowhere").exists()
    env_result = run_cli_in_process(["get", "k"], env={"IMSTORE_DIR": str(tmp_path / "nowhere")})
    assert env_result.code == 10


def test_the_default_store_is_created_on_first_write(tmp_path, monkeypatch):
    monkeypatch.delenv("IMSTORE_DIR", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert run_cli_in_process(["get", "k"]).code == 10
    assert not (tmp_path / "data" / "imstore").exists()
    assert run_cli_in_process(["put", "k"], stdin=b"first").code == 0
    assert (tmp_path / "data" / "imstore" / "config").is_file()
    assert run_cli_in_process(["get", "k"]).stdout == b"first"


def test_init_creates_a_store_refuses_a_non_empty_directory_and_is_idempotent(tmp_path):
    target = tmp_path / "new"
    created = run_cli_in_process(["--json", "init", str(target)])
    assert created.code == 0 and json.loads(created.stdout)["created"] is True
    again = run_cli_in_process(["--json", "init", str(target)])
    assert again.code == 0 and json.loads(again.stdout)["created"] is False
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "file.txt").write_text("mine")
    refused = run_cli_in_process(["init", str(busy)])
    assert refused.code == 2 and sorted(os.listdir(busy)) == ["file.txt"]


def test_version_flag_and_help(cli):
    from imstore import __version__

    assert cli("--version").out.strip() == f"imstore {__version__}"
    help_text = cli("put", "--help").out
    assert "Example:" in help_text and "--if-version" in help_text


def test_unknown_command_and_missing_argument_are_usage_errors(cli):
    assert cli("frobnicate").code == 2
    assert cli("get").code == 2
    assert cli("put", "k", "--meta", "novalue", stdin=b"x").code == 2


def test_meta_and_content_type_are_recorded(cli, store_path):
    cli("put", "k", "-t", "text/plain", "--meta", "owner=ann", "--meta", "team=ops", stdin=b"x")
    with Store.open(store_path) as store:
        version = store.resolve("k")
    assert version.content_type == "text/plain" and version.meta == {"owner": "ann", "team": "ops"}
    assert cli("put", "k", "-t", "text/markdown", stdin=b"x").out.rstrip().endswith("new")


def test_real_process_exit_codes_and_binary_stdout(cli_process):
    payload = bytes(range(256)) * 100
    assert cli_process("put", "bin", stdin=payload).code == 0
    assert cli_process("get", "bin").stdout == payload
    missing = cli_process("get", "nope")
    assert missing.code == 3 and missing.stdout == b"" and missing.stderr.count("\n") == 1
    assert cli_process("get", "").code == 2


def test_broken_pipe_on_stdout_is_quiet(cli_process, tmp_path):
    import subprocess
    import sys

    cli_process("put", "big", stdin=os.urandom(4 << 20))
    reader = subprocess.run(
        f"{sys.executable} -m imstore --store {tmp_path / 'store'} get big | head -c 10 > /dev/null; echo ${{PIPESTATUS[0]}}",
        shell=True,
        executable="/bin/bash",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "Traceback" not in reader.stderr and "Error" not in reader.stderr
    assert reader.stdout.strip() in ("0", "1")


def _first_write_to_default_store(args):
    data_home, number = args
    os_env = {"XDG_DATA_HOME": data_home}
    import os as _os

    _os.environ.update(os_env)
    _os.environ.pop("IMSTORE_DIR", None)
    from imstore import cli as _cli  # noqa: F401  (imported in the child)
    from tests.conftest import run_cli_in_process as _run

    result = _run(["put", f"k{number}"], stdin=b"%d" % number)
    return result.code, result.stderr[-2000:]


def test_racing_first_writes_create_one_default_store(tmp_path):
    import multiprocessing

    with multiprocessing.get_context("fork").Pool(8) as pool:
        answers = pool.map(_first_write_to_default_store, [(str(tmp_path / "data"), n) for n in range(16)])
    assert [code for code, _ in answers] == [0] * 16, [stderr for code, stderr in answers if code]  # failed once in CI: why?
    with Store.open(tmp_path / "data" / "imstore") as store:
        assert len(store.ls()) == 16 and store.verify().ok


def test_get_into_a_full_disk_is_a_one_line_error(cli_process, store_path):
    import subprocess
    import sys

    cli_process("put", "k", stdin=b"some bytes")
    with open("/dev/full", "wb") as full:
        result = subprocess.run(
            [sys.executable, "-m", "imstore", "--store", str(store_path), "get", "k"], stdout=full, stderr=subprocess.PIPE, timeout=60
        )
    assert result.returncode == 1
    assert result.stderr.decode().strip().startswith("imstore: error: cannot write the output")
    assert "unexpected" not in result.stderr.decode()


def test_a_bug_is_exit_1_in_one_line_with_a_traceback_only_under_debug(cli, monkeypatch):
    from imstore.cli import keys

    def broken(**_):
        raise RuntimeError("a bug")

    monkeypatch.setattr(keys, "open_store", broken)
    plain, debug = cli("ls"), cli("--debug", "ls")
    assert (plain.code, plain.stdout) == (1, b"")
    assert plain.stderr == "imstore: error: unexpected RuntimeError: a bug (rerun with --debug for a traceback)\n"
    assert debug.code == 1 and "Traceback (most recent call last)" in debug.stderr and "RuntimeError: a bug" in debug.stderr


def test_debug_shows_the_read_caches_notes_as_warnings(cli, store_path, private_cache_dir):
    import sqlite3

    from imstore.cache import DB_NAME, CacheSettings, cache_folder

    object_hash = json.loads(cli("put", "k", "--json", stdin=b"right bytes").stdout)["hash"]
    database = cache_folder(CacheSettings(directory=private_cache_dir), store_path) / "data" / DB_NAME

    def tamper() -> None:
        with sqlite3.connect(database, isolation_level=None) as db:
            db.execute("UPDATE Cache SET value = ? WHERE key = ?", (b"wrong bytes", f"o:{object_hash}"))

    tamper()
    quiet = cli("get", "k", "--version", "1")
    assert (quiet.code, quiet.stdout, quiet.stderr) == (0, b"right bytes", "")
    tamper()
    debug = cli("--debug", "get", "k", "--version", "1")
    assert (debug.code, debug.stdout) == (0, b"right bytes")
    assert debug.stderr == f"imstore: warning: cache: cached object {object_hash} did not match its hash; dropped it\n"
