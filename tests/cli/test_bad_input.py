"""Every bad input of RELIABILITY.md that reaches the CLI: a clear one-line error, the right exit code,
nothing written (version count unchanged), verify clean afterwards, and no file outside the store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from imstore import Store
from tests.conftest import IMSTORE, run_cli_in_process

USAGE, NOT_FOUND = 2, 3


def snapshot(store_path: Path) -> tuple[list[tuple], set[Path]]:
    """The store's versions and every path around it (to see that nothing was written anywhere)."""
    with Store.open(store_path) as store:
        versions = [(v.seq, v.key, v.version, v.hash) for v in store.log_records()]
    around = store_path.parent
    return versions, {path for path in around.rglob("*") if "index.sqlite" not in path.name}


@pytest.fixture
def populated(store_path):
    with Store.open(store_path) as store:
        store.put("k", b"one")
        store.put("k", b"two")
    return store_path


def assert_refused(result, code: int, populated: Path, before, *, mentions: str = "") -> None:
    assert result.code == code, (result.code, result.stderr)
    assert result.stdout == b""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert mentions.lower() in lines[0].lower(), lines[0]
    assert snapshot(populated) == before, "a refused input changed the store or wrote a file"
    with Store.open(populated) as store:
        report = store.verify()
        assert report.ok and not report.notes, (report.problems, report.notes)


def cli_in(populated: Path, *args: str, stdin: bytes = b""):
    return run_cli_in_process(["--store", str(populated), *args], stdin=stdin)


def cli_process(populated: Path, *args, stdin=b"", **options) -> subprocess.CompletedProcess:
    return subprocess.run([*IMSTORE, "--store", str(populated), *args], input=stdin, capture_output=True, timeout=60, **options)


class Completed:
    """A subprocess result shaped like the conftest Result."""

    def __init__(self, completed: subprocess.CompletedProcess):
        self.code, self.stdout, self.stderr = completed.returncode, completed.stdout, completed.stderr.decode("utf-8", "replace")


# ------------------------------------------------------------------ keys
BAD_KEYS = {
    "empty": ("", "empty"),
    "whitespace": ("   ", "whitespace"),
    "ideographic-space": ("\u3000", "whitespace"),
    "nul": ("a\x00b", "control"),
    "tab": ("a\tb", "control"),
    "newline": ("a\nb", "control"),
    "escape": ("\x1b[31mred", "control"),
    "del": ("a\x7f", "control"),
    "c1": ("a\x85b", "control"),
    "lone-surrogate": ("a\udcffb", "utf-8"),
    "1025-bytes": ("k" * 1025, "1024"),
    "1-mib": ("k" * (1 << 20), "1024"),
}


@pytest.mark.parametrize("name", BAD_KEYS)
@pytest.mark.parametrize("command", ["put", "get", "history", "rm"])
def test_bad_keys_are_usage_errors_and_write_nothing(populated, name, command):
    key, reason = BAD_KEYS[name]
    before = snapshot(populated)
    result = cli_in(populated, command, key, stdin=b"data")
    assert_refused(result, USAGE, populated, before, mentions=reason)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "raw", [b"", b"  ", b"a\tb", b"a\x1bb", b"\xff\xfe", b"a\xed\xa0\x80b", b"\xc2\x85", b"k" * 1025], ids=lambda raw: raw.hex() or "empty"
)
def test_bad_keys_from_a_real_argv(populated, raw):
    """argv is bytes: invalid UTF-8 and encoded surrogates arrive as lone surrogates and are refused."""
    before = snapshot(populated)
    result = Completed(cli_process(populated, b"put", raw, stdin=b"data"))
    assert_refused(result, USAGE, populated, before)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("key", ["../x", "../../outside", "%2e%2e%2f", "%252e%252e%252f", "\uff0e\uff0e\uff0fx", "/etc/passwd", "a/./b"])
def test_path_like_keys_are_plain_keys_and_nothing_appears_outside_the_store(populated, key, tmp_path):
    cache = tmp_path / "imstore-cache"  # the per-test read cache (tests/conftest.py), outside the store by design
    around = {path for path in tmp_path.rglob("*") if not path.is_relative_to(populated) and not path.is_relative_to(cache)}
    workdir = populated / "objects"  # run from inside the store: '../x' relative to here is still inside tmp_path
    command = [*IMSTORE, "--store", str(populated), "put", key]
    result = subprocess.run(command, input=b"payload", capture_output=True, cwd=workdir, timeout=60)
    assert result.returncode == 0, result.stderr
    assert run_cli_in_process(["--store", str(populated), "get", key]).stdout == b"payload"
    assert {path for path in tmp_path.rglob("*") if not path.is_relative_to(populated) and not path.is_relative_to(cache)} == around
    with Store.open(populated) as store:
        assert store.verify().ok and [v.key for v in store.history(key)] == [key]


# ------------------------------------------------------------------ content
def test_empty_content_is_valid(populated):
    result = cli_in(populated, "put", "empty", stdin=b"")
    assert result.code == 0 and cli_in(populated, "get", "empty").stdout == b""


def test_a_directory_is_refused(populated, tmp_path):
    (tmp_path / "adir").mkdir()
    before = snapshot(populated)
    assert_refused(cli_in(populated, "put", "k", str(tmp_path / "adir")), USAGE, populated, before, mentions="directory")


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/null", "/dev/urandom"])
def test_a_device_is_refused(populated, device):
    before = snapshot(populated)
    assert_refused(cli_in(populated, "put", "k", device), USAGE, populated, before, mentions="device")


def test_a_missing_file_is_refused(populated, tmp_path):
    before = snapshot(populated)
    assert_refused(cli_in(populated, "put", "k", str(tmp_path / "absent")), USAGE, populated, before, mentions="no such file")


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "path, mentions",
    [("/proc/self/mem", "cannot read"), ("/dev/null/x", "cannot read")],
    ids=["read-fails-with-eio", "not-a-directory"],
)
def test_an_unreadable_file_is_refused(populated, path, mentions):
    """Root reads past chmod, so unreadable means: open works but read() fails, or the path cannot be opened."""
    before = snapshot(populated)
    assert_refused(cli_process_result(populated, "put", "k", path), USAGE, populated, before, mentions=mentions)


def cli_process_result(populated: Path, *args: str) -> Completed:
    return Completed(cli_process(populated, *args))


@pytest.mark.timeout(60)
def test_a_fifo_with_a_writer_is_streamed(populated, tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)

    def feed():
        with open(fifo, "wb") as handle:
            handle.write(b"through a fifo")

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    result = cli_process(populated, "put", "from-fifo", str(fifo))
    feeder.join(timeout=30)
    assert result.returncode == 0, result.stderr
    assert cli_in(populated, "get", "from-fifo").stdout == b"through a fifo"


@pytest.mark.timeout(60)
def test_closed_stdin_is_refused(populated):
    before = snapshot(populated)
    completed = subprocess.run(
        [*IMSTORE, "--store", str(populated), "put", "k"], stdin=None, capture_output=True, timeout=60, preexec_fn=lambda: os.close(0)
    )
    assert_refused(Completed(completed), USAGE, populated, before, mentions="stdin")


@pytest.mark.timeout(60)
def test_dev_zero_on_stdin_is_bounded(populated):
    before = snapshot(populated)
    # A file-size limit keeps this test from filling the disk while the bound is missing.
    script = (
        "import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN);"
        " resource.setrlimit(resource.RLIMIT_FSIZE, (256 << 20, 256 << 20));"
        " from imstore.cli import main; main(sys.argv[1:])"
    )
    with open("/dev/zero", "rb") as zero:
        completed = subprocess.run(
            [sys.executable, "-c", script, "--store", str(populated), "put", "k", "--max-size", "1M"],
            stdin=zero,
            capture_output=True,
            timeout=60,
        )
    assert_refused(Completed(completed), USAGE, populated, before, mentions="larger")
    with open("/dev/zero", "rb") as zero:  # without a bound an endless device is refused before reading
        unbounded = subprocess.run(
            [sys.executable, "-c", script, "--store", str(populated), "put", "k"], stdin=zero, capture_output=True, timeout=60
        )
    assert_refused(Completed(unbounded), USAGE, populated, before, mentions="--max-size")
    with open(os.devnull, "rb") as null:  # /dev/null is a fine way to store empty content
        assert subprocess.run([*IMSTORE, "--store", str(populated), "put", "empty"], stdin=null, timeout=60).returncode == 0


# ------------------------------------------------------------------ versions, times and hashes
@pytest.mark.parametrize(
    "args, code, mentions",
    [
        (["get", "k", "--version", "abc"], USAGE, "version"),
        (["get", "k", "--version", "-1"], USAGE, "version"),
        (["get", "k", "--version", "0"], USAGE, "version"),
        (["get", "k", "--version", "1.5"], USAGE, "version"),
        (["get", "k", "--version", ""], USAGE, "version"),
        (["get", "k", "--version", "99"], NOT_FOUND, "99"),
        (["get", "absent", "--version", "1"], NOT_FOUND, "absent"),
        (["get", "k", "--at", "yesterday"], USAGE, "time"),
        (["get", "k", "--at", "1970-01-01T00:00:00Z"], NOT_FOUND, ""),
        (["get", "k", "--at", "2026-13-45"], USAGE, "time"),
        (["put", "k", "--if-version", "abc"], USAGE, "version"),
        (["put", "k", "--if-version", "-1"], USAGE, "version"),
        (["put", "k", "--if-version", "1"], 4, "version"),
        (["put", "k", "--if-absent"], 4, "exists"),
        (["rm", "k", "--if-version", "x"], USAGE, "version"),
        (["cat", "zzzzzzzz"], USAGE, "hex"),
        (["cat", "abc"], USAGE, "hex"),
        (["cat", ""], USAGE, "hex"),
        (["cat", "0" * 65], USAGE, "hex"),
        (["cat", "../../../etc/passwd"], USAGE, "hex"),
        (["cat", "0" * 64], NOT_FOUND, "0" * 64),
        (["cat", "00000000"], NOT_FOUND, "00000000"),
        (["history", "absent"], NOT_FOUND, "absent"),
        (["rm", "absent"], NOT_FOUND, "absent"),
        (["log", "--after", "x"], USAGE, ""),
        (["log", "--limit", "-5"], USAGE, ""),
    ],
    ids=lambda value: " ".join(value) if isinstance(value, list) else None,
)
def test_bad_versions_times_and_hashes(populated, args, code, mentions):
    before = snapshot(populated)
    assert_refused(cli_in(populated, *args, stdin=b"new bytes"), code, populated, before, mentions=mentions)


@pytest.mark.timeout(60)
def test_the_same_refusals_hold_in_a_real_process(populated):
    before = snapshot(populated)
    for args, code in [(["get", "k", "--version", "-1"], USAGE), (["cat", "xyz"], USAGE), (["get", "k", "--version", "7"], NOT_FOUND)]:
        assert_refused(Completed(cli_process(populated, *args)), code, populated, before)


# ------------------------------------------------------------------ outputs that are not regular files
@pytest.mark.timeout(60)
def test_get_to_a_fifo_writes_into_it_and_leaves_it_a_fifo(populated, tmp_path):
    import stat

    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    read_end = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # a reader is there, so the CLI's open does not block
    try:
        result = cli_process(populated, "get", "k", "-o", str(fifo))
        try:
            received = os.read(read_end, 1 << 16)
        except BlockingIOError:
            received = b""
    finally:
        os.close(read_end)
    assert result.returncode == 0, result.stderr
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode), "the FIFO was replaced by a regular file"
    assert received == b"two"


@pytest.mark.parametrize("content_type", ["text/plain\r\nX-Evil: 1", "text/plain\x01", "text/plain\x7f", "tëxt/plain"])
def test_a_content_type_that_cannot_be_an_http_header_is_refused_on_every_write_path(cli, content_type):
    """It would make the version unservable over HTTP (or split the answer's headers): exit 2, nothing written."""
    put = cli("put", "k", "-t", content_type, stdin=b"x")
    assert put.code == 2 and "content type" in put.stderr
    line = json.dumps({"key": "j", "content": "x", "content_type": content_type}).encode() + b"\n"
    imported = cli("import", "-", stdin=line)
    assert imported.code == 2 and "content type" in imported.stderr
    assert cli("ls").out == ""


def test_a_message_with_control_characters_or_too_long_is_refused(cli):
    assert cli("put", "k", "-m", "bad\x1b[31m", stdin=b"x").code == 2
    assert cli("put", "k", "-m", "x" * 5000, stdin=b"x").code == 2
    assert cli("put", "k", "-m", "two\nlines\tfine", stdin=b"x").code == 0


def test_bare_imstore_and_a_bare_group_print_their_help_and_exit_2():
    for args, usage in (([], "Usage: imstore [OPTIONS] COMMAND"), (["token"], "Usage: imstore token [OPTIONS] COMMAND")):
        result = run_cli_in_process(args)
        assert result.code == 2, args
        assert usage in result.out, result.out



@pytest.mark.parametrize(
    "args, path",
    [
        (["--bogus"], "imstore"),
        (["ls", "--bogus"], "imstore ls"),
        (["token", "create", "--bogus"], "imstore token create"),
        (["cache", "stats", "--bogus"], "imstore cache stats"),
        (["token", "revoke"], "imstore token revoke"),
    ],
)
def test_a_usage_error_names_the_whole_command_path_to_ask_for_help(args, path):
    result = run_cli_in_process(args)
    assert result.code == 2
    assert result.stderr.endswith(f"(see: {path} --help)\n"), result.stderr


@pytest.mark.parametrize(
    "command",
    [
        lambda out, object_hash: ["get", "k", "-o", out],
        lambda out, object_hash: ["cat", object_hash, "-o", out],
        lambda out, object_hash: ["export", out + ".tar"],
    ],
    ids=["get -o", "cat -o", "export"],
)
@pytest.mark.parametrize("parent", ["missing", "a-file"])
def test_an_output_path_that_cannot_be_made_is_a_usage_error_not_an_unavailable_store(populated, tmp_path, command, parent):
    # exit 6 says the store is unavailable; here the store is fine and the path given is wrong.
    (tmp_path / "a-file").write_bytes(b"")
    with Store.open(populated) as store:
        object_hash = store.history("k")[-1].hash
    result = run_cli_in_process(["--store", str(populated), *command(str(tmp_path / parent / "x"), object_hash)])
    assert (result.code, result.stdout) == (2, b""), result.stderr
    assert result.stderr.count("\n") == 1 and str(tmp_path / parent) in result.stderr
    assert not list(tmp_path.glob(f"{parent}*/**/x*")) and not (tmp_path / "missing").exists()


def test_export_into_a_directory_under_a_file_is_a_usage_error(populated, tmp_path):
    (tmp_path / "a-file").write_bytes(b"")
    result = run_cli_in_process(["--store", str(populated), "export", str(tmp_path / "a-file" / "sub" / "dir")])
    assert result.code == 2 and "a-file" in result.stderr


def test_a_token_file_that_cannot_be_read_is_exit_12_like_any_missing_token(tmp_path):
    # 12 is the README's code for a missing, bad or read-only token; the server is never asked.
    result = run_cli_in_process(["--remote", "http://127.0.0.1:9", "--token-file", str(tmp_path / "no-such-token"), "ls"])
    assert (result.code, result.stdout) == (12, b"")
    assert result.stderr == f"imstore: error: cannot read the token file {tmp_path / 'no-such-token'}: No such file or directory\n"


@pytest.mark.parametrize(
    "args",
    [
        ["cache", "stats"], ["cache", "clear"], ["cache", "clear", "--all"], ["export", "OUT"], ["repack"],
        ["serve"], ["token", "list"], ["init"],
    ],  # fmt: skip
    ids=" ".join,
)
def test_a_command_with_no_remote_form_is_a_usage_error_with_remote(args, tmp_path, private_cache_dir):
    # Never a crash (export, repack) nor a silent local answer (cache): the server is never asked.
    private_cache_dir.mkdir()
    (private_cache_dir / "0123456789abcdef0123456789abcdef").mkdir()  # a cache that clear --all would remove
    args = [str(tmp_path / "out") if arg == "OUT" else arg for arg in args]
    result = run_cli_in_process(["--remote", "http://127.0.0.1:9", *args])
    command = " ".join(arg for arg in args if not arg.startswith(("-", "/")))
    assert (result.code, result.stdout) == (2, b""), result.stderr
    assert result.stderr == f"imstore: error: imstore {command} has no remote form: run it where the store is, without --remote\n"
    assert not (tmp_path / "out").exists() and any(private_cache_dir.iterdir())


@pytest.mark.parametrize("args", [["ls", "--limit", "99999999999999999999"], ["log", "--after", "99999999999999999999"],
                                  ["history", "k", "--limit", "99999999999999999999"]])  # fmt: skip
def test_out_of_range_counts_are_usage_errors_not_overflow(cli, args):
    """HARDENING S5, the CLI half: a number SQLite cannot hold is exit 2, never 'unexpected OverflowError' (exit 1)."""
    assert cli("put", "k", stdin=b"x").code == 0
    result = cli(*args)
    assert result.code == 2 and "range" in result.stderr, (result.code, result.stderr)


def test_token_create_output_writes_a_private_file_and_a_readable_token_file_is_warned_about(tmp_path):
    store = tmp_path / "store"
    assert run_cli_in_process(["--store", str(store), "init"]).code == 0
    token_file = tmp_path / "token"
    token_file.write_text("old")
    os.chmod(token_file, 0o644)
    created = run_cli_in_process(["--store", str(store), "token", "create", "--name", "a", "--output", str(token_file)])
    assert created.code == 0 and created.stdout == b""
    assert os.stat(token_file).st_mode & 0o777 == 0o600 and len(token_file.read_text().strip()) > 20
    os.chmod(token_file, 0o644)
    remote = run_cli_in_process(["--remote", "http://127.0.0.1:9", "--token-file", str(token_file), "ls"])
    assert "can be read by other users" in remote.stderr


@pytest.mark.parametrize("name", ["out.zip", "out.7z", "out.gz"])
def test_export_to_an_archive_name_it_cannot_write_is_refused_not_made_a_directory(cli, tmp_path, name):
    assert cli("put", "k", stdin=b"x").code == 0
    result = cli("export", str(tmp_path / name))
    assert result.code == 2 and "not a" in result.stderr and not (tmp_path / name).exists()


def test_serve_on_a_port_in_use_says_so(store_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "imstore", "--store", str(store_path), "serve", "--port", str(port),
                                 "--workers", "1"], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 2 and f"cannot listen on 127.0.0.1:{port}" in result.stderr, result.stderr
    assert "unexpected" not in result.stderr
