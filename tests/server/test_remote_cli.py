"""The CLI with --remote: the same output, --json and exit codes as on the local store, streaming both ways."""

from __future__ import annotations

import json
import os

import pytest
from conftest import run_cli_in_process

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def server(module_server):
    return module_server


@pytest.fixture
def both(server, tmp_path):
    """(local, remote): run the CLI on the store directly, or through the server, with the write token."""
    token_file = tmp_path / "token"
    token_file.write_text(server.write_token + "\n")
    token_file.chmod(0o600)  # a token file others can read is warned about

    def local(*args, stdin=b""):
        return run_cli_in_process(["--store", str(server.store), *args], stdin=stdin)

    def remote(*args, stdin=b"", token_file_path=token_file, env=None):
        prefix = ["--remote", server.url] + (["--token-file", str(token_file_path)] if token_file_path else [])
        return run_cli_in_process([*prefix, *args], stdin=stdin, env=env)

    return local, remote


def test_reads_print_the_same_through_the_server(both, tmp_path):
    local, remote = both
    assert remote("put", "notes/a", "-m", "first draft", "--meta", "k=v", stdin=b"hello\n").code == 0
    assert remote("put", "notes/a", "-t", "text/plain", stdin=b"hello again\n").code == 0
    assert remote("put", "notes/ünï", stdin=b"x").code == 0
    assert remote("rm", "notes/ünï", "-m", "gone").code == 0
    for args in (
        ["history", "notes/a"],
        ["history", "notes/a", "--json"],
        ["history", "notes/a", "--limit", "1"],
        ["ls"],
        ["ls", "notes/", "--all", "--json"],
        ["log"],
        ["log", "--after", "1", "--limit", "2", "--json"],
        ["get", "notes/a"],
        ["get", "notes/a", "--version", "1"],
        ["history", "notes/ünï"],
    ):
        mine, theirs = local(*args), remote(*args)
        assert (theirs.code, theirs.stdout) == (mine.code, mine.stdout), args
    object_hash = json.loads(local("history", "notes/a", "--json").stdout)[0]["hash"]
    assert remote("cat", object_hash[:10]).stdout == b"hello\n"
    assert remote("get", "notes/a", "-o", str(tmp_path / "out.txt")).code == 0
    assert (tmp_path / "out.txt").read_bytes() == b"hello again\n"


def test_writes_print_like_local_ones(both):
    local, remote = both
    first = remote("put", "w", "--json", stdin=b"abc")
    assert first.code == 0
    document = json.loads(first.stdout)
    assert set(document) == {"key", "version", "hash", "size", "unchanged"}
    assert (document["version"], document["size"], document["unchanged"]) == (1, 3, False)
    unchanged = remote("put", "w", stdin=b"abc")
    assert unchanged.out.split("\t")[-1] == "unchanged\n"
    text = remote("put", "w", stdin=b"abcd")
    assert text.out == "\t".join(["w", "2", json.loads(local("history", "w", "--json").stdout)[-1]["hash"], "4", "new"]) + "\n"
    removed = remote("rm", "w", "--json")
    assert json.loads(removed.stdout)["op"] == "delete"


@pytest.mark.parametrize(
    "args, code",
    [
        (["get", "missing"], 3),
        (["get", "w", "--version", "9"], 3),
        (["rm", "missing"], 3),
        (["put", "w", "--if-absent"], 4),
        (["put", "w", "--if-version", "7"], 4),
        (["put", "a\tb"], 2),
        (["get", "w", "--version", "x"], 2),
        (["cat", "zz"], 2),
        (["cat", "00000000"], 3),
        (["get", "w", "--at", "2000-01-01T00:00:00Z"], 3),
    ],
)
def test_errors_have_the_local_exit_codes(both, args, code):
    local, remote = both
    args = [arg.replace("w", "err-w") if arg == "w" else arg for arg in args]
    assert local("put", "err-w", stdin=b"x").code in (0,)
    mine, theirs = local(*args, stdin=b"y"), remote(*args, stdin=b"y")
    assert mine.code == code, mine.stderr
    assert theirs.code == code, theirs.stderr
    assert theirs.stdout == b"" and theirs.stderr.count("\n") == 1


def test_auth_failures_and_an_unreachable_server_exit_12_and_6(both, server, tmp_path):
    _, remote = both
    assert remote("ls", token_file_path=None, env={"IMSTORE_TOKEN": ""}).code == 12
    read_file = tmp_path / "read-token"
    read_file.write_text(server.read_token)
    assert remote("ls", token_file_path=read_file).code == 0
    refused = remote("put", "k", token_file_path=read_file, stdin=b"x")
    assert refused.code == 12 and "write" in refused.stderr
    assert remote("ls", token_file_path=None, env={"IMSTORE_TOKEN": server.read_token}).code == 0
    down = run_cli_in_process(["--remote", "http://127.0.0.1:9", "ls"])
    assert down.code == 6 and "cannot reach" in down.stderr
    assert remote("verify").code == 2


def test_large_put_and_get_stream_through_the_server(both, tmp_path):
    local, remote = both
    source = tmp_path / "big.bin"
    block = os.urandom(1 << 20)
    with open(source, "wb") as handle:
        for _ in range(24):
            handle.write(block)
    put = remote("put", "big", str(source), "--json")
    assert put.code == 0, put.stderr
    assert json.loads(put.stdout)["size"] == 24 << 20
    target = tmp_path / "copy.bin"
    assert remote("get", "big", "-o", str(target)).code == 0
    assert target.read_bytes() == source.read_bytes()
    streamed = remote("get", "big")
    assert streamed.code == 0 and streamed.stdout == source.read_bytes()


def test_local_commands_never_import_aiohttp(store_path):
    import subprocess
    import sys

    probe = (
        "import sys\nfrom imstore import cli\n"
        f"code = cli.run(['--store', {str(store_path)!r}, 'ls'])\n"
        "print(code, 'aiohttp' in sys.modules, 'imstore.server.client' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert result.stdout.split() == ["0", "False", "False"], result.stderr


def test_debug_works_with_remote_on_every_read_and_write(both):
    # --debug shows the store's notes; a RemoteStore has none (it once had no way to say so).
    _, remote = both
    assert remote("--debug", "put", "debugged", stdin=b"x").code == 0
    for args in (["ls"], ["get", "debugged"], ["history", "debugged"], ["log"], ["rm", "debugged"]):
        result = remote("--debug", *args)
        assert result.code == 0, (args, result.stderr)
        assert result.stderr == "", (args, result.stderr)
