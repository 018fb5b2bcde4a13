"""import --remote: one streamed POST /v1/import, one atomic batch, the same output and exit codes as a local import."""

from __future__ import annotations

import base64
import io
import json
import os
import tarfile
import time
from pathlib import Path

import pytest
from conftest import run_cli_in_process

from imstore import Store

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def server(module_server):
    return module_server


@pytest.fixture
def run(server, tmp_path):
    """run.remote(*args) through the server with the write token; run.local(*args) on a fresh local store (the reference);
    run.served(*args) directly on the server's store (to look at what the server committed)."""
    token_file = tmp_path / "token"
    token_file.write_text(server.write_token + "\n")
    token_file.chmod(0o600)  # a token file others can read is warned about
    reference = tmp_path / "reference-store"
    Store.init(reference)[0].close()

    class Runner:
        token = token_file
        store = server.store

        @staticmethod
        def remote(*args, stdin=b"", token=None):
            return run_cli_in_process(["--remote", server.url, "--token-file", str(token or token_file), *args], stdin=stdin)

        @staticmethod
        def local(*args, stdin=b""):
            return run_cli_in_process(["--store", str(reference), *args], stdin=stdin)

        @staticmethod
        def served(*args, stdin=b""):
            return run_cli_in_process(["--store", str(server.store), *args], stdin=stdin)

        @staticmethod
        def log_length() -> int:
            result = Runner.served("log", "--json")
            assert result.code == 0, result.stderr
            return len(json.loads(result.stdout))

    return Runner


def served_versions(run, key: str):
    with Store.open(run.store) as store:
        return store.history(key)


def unique(label: str) -> bytes:
    """Content no other test has stored, so dedup counts match a fresh reference store."""
    return f"{label} {os.urandom(8).hex()}\n".encode()


def make_tree(root: Path) -> dict[str, bytes]:
    files = {
        "a.txt": unique("a"),
        "sub/b.txt": unique("b"),
        "sub/deeper/ünïcode name.txt": unique("u"),
        "empty": b"",
        "big.bin": os.urandom(9 << 20),  # above LOOSE_MIN: stored loose on the server, streamed through
    }
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (root / "link").symlink_to("a.txt")
    os.mkfifo(root / "fifo")
    return files


def same_result(mine, theirs) -> None:
    """Same exit code, stdout and stderr (the local import is the reference)."""
    assert (theirs.code, theirs.out, theirs.stderr) == (mine.code, mine.out, mine.stderr)


def assert_served(run, files: dict[str, bytes], prefix: str, tmp_path: Path) -> None:
    """Every file reads back through the server and from a local export of the server's store."""
    for name, data in files.items():
        got = run.remote("get", prefix + name)
        assert got.code == 0 and got.stdout == data, (name, got.stderr)
    exported = tmp_path / f"export-{os.urandom(4).hex()}"
    result = run.served("export", str(exported), "--prefix", prefix)
    assert result.code == 0, result.stderr
    found = {str(path.relative_to(exported)): path.read_bytes() for path in exported.rglob("*") if path.is_file()}
    assert found == {prefix + name: data for name, data in files.items()}


# ============================================================ round trips
def test_a_directory_imports_like_a_local_import(run, tmp_path):
    source = tmp_path / "tree"
    files = make_tree(source)
    mine = run.local("import", str(source), "--prefix", "dir1/", "-m", "from a tree")
    theirs = run.remote("import", str(source), "--prefix", "dir1/", "-m", "from a tree")
    same_result(mine, theirs)
    assert theirs.out.startswith("added 5\tunchanged 0\tskipped 2\t")
    assert "link: a symlink; not followed" in theirs.stderr and "fifo: not a regular file" in theirs.stderr
    assert_served(run, files, "dir1/", tmp_path)
    history = json.loads(run.remote("history", "dir1/a.txt", "--json").stdout)
    assert [entry["message"] for entry in history] == ["from a tree"]


def test_one_import_is_one_request(run, server, tmp_path):
    source = tmp_path / "tree"
    make_tree(source)
    before, log = run.log_length(), server.log()
    assert run.remote("import", str(source), "--prefix", "batch/").code == 0
    assert run.log_length() == before + 5
    after = server.log()
    assert after.count("POST /v1/import 201") == log.count("POST /v1/import 201") + 1
    assert after.count("PUT /v1/keys") == log.count("PUT /v1/keys")  # not a put per file


def test_follow_symlinks_and_json_output_match(run, tmp_path):
    source = tmp_path / "tree"
    make_tree(source)
    (source / "outside").symlink_to(tmp_path)
    mine = run.local("import", str(source), "--prefix", "follow/", "--follow-symlinks", "--json")
    theirs = run.remote("import", str(source), "--prefix", "follow/", "--follow-symlinks", "--json")
    assert (theirs.code, theirs.stderr) == (mine.code, mine.stderr)
    local_doc, remote_doc = json.loads(mine.stdout), json.loads(theirs.stdout)
    assert set(remote_doc) == set(local_doc)
    for field in ("added", "unchanged", "skipped", "files", "bytes_written", "bytes_saved", "warnings"):
        assert remote_doc[field] == local_doc[field], field
    assert remote_doc["added"] == 6  # the link to a.txt is followed: its own key
    assert run.remote("get", "follow/link").stdout == (source / "a.txt").read_bytes()


@pytest.mark.parametrize("mode, suffix", [("w", ".tar"), ("w:gz", ".tar.gz"), ("w:xz", ".tar.xz")])
def test_tar_files_are_sent_as_they_are(run, tmp_path, mode, suffix):
    source = tmp_path / "tree"
    files = make_tree(source)
    (source / "fifo").unlink()
    archive = tmp_path / f"tree{suffix}"
    with tarfile.open(archive, mode) as tar:
        tar.add(source, arcname=".")
    prefix = f"tar{suffix}/"
    mine = run.local("import", str(archive), "--prefix", prefix)
    theirs = run.remote("import", str(archive), "--prefix", prefix)
    same_result(mine, theirs)
    assert theirs.out.startswith("added 5\t") and "tar member ./link: a symlink; skipped" in theirs.stderr
    assert_served(run, files, prefix, tmp_path)


def test_stdin_tar_and_stdin_jsonl(run, tmp_path):
    buffer = io.BytesIO()
    data = unique("streamed")
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo("./streamed.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    theirs = run.remote("import", "-", "--prefix", "stdin/", stdin=buffer.getvalue())
    same_result(run.local("import", "-", "--prefix", "stdin/", stdin=buffer.getvalue()), theirs)
    assert run.remote("get", "stdin/streamed.txt").stdout == data
    lines = json.dumps({"key": "stdin/j", "content": "inline ✓", "content_type": "text/plain", "meta": {"k": "v"}}) + "\n"
    theirs = run.remote("import", "-", "--json", stdin=lines.encode())
    assert theirs.code == 0 and json.loads(theirs.stdout)["added"] == 1
    first = served_versions(run, "stdin/j")[0]
    assert (first.content_type, first.meta) == ("text/plain", {"k": "v"})
    assert run.remote("get", "stdin/j").stdout == "inline ✓".encode()


def test_jsonl_path_lines_are_sent_inline(run, tmp_path, monkeypatch):
    folder = tmp_path / "lines"
    folder.mkdir()
    (folder / "blob.bin").write_bytes(payload := os.urandom(3 << 20) + b"tail")
    (folder / "note.txt").write_bytes(note := unique("note"))
    records = [
        {"key": "jl/blob", "path": "blob.bin", "message": "from a path"},
        {"key": "jl/note", "path": "note.txt", "meta": {"src": "ü"}},
        {"key": "jl/b64", "content_b64": base64.b64encode(b"\x00\x01").decode()},
    ]
    listing = folder / "items.jsonl"
    listing.write_text("".join(json.dumps(record) + "\n" for record in records) + "\n")
    mine, theirs = run.local("import", str(listing)), run.remote("import", str(listing))
    same_result(mine, theirs)
    assert run.remote("get", "jl/blob").stdout == payload
    assert run.remote("get", "jl/note").stdout == note
    assert run.remote("get", "jl/b64").stdout == b"\x00\x01"
    assert served_versions(run, "jl/note")[0].meta == {"src": "ü"}
    # On stdin, "path" is relative to the working directory, as locally.
    monkeypatch.chdir(folder)
    line = json.dumps({"key": "jl/cwd", "path": "note.txt"}) + "\n"
    assert run.remote("import", "-", stdin=line.encode()).code == 0
    assert run.remote("get", "jl/cwd").stdout == note


def test_skip_errors_names_the_same_lines_as_locally(run, tmp_path):
    folder = tmp_path / "lines"
    folder.mkdir()
    (folder / "ok.txt").write_bytes(unique("ok"))
    lines = [
        {"key": "skip/ok", "path": "ok.txt"},
        {"key": "skip/missing", "path": "missing.txt"},  # dropped by the client (a blank line keeps the numbering)
        {"key": "skip/typo", "contnt": "x"},  # judged by the server: "line 3"
        {"key": "skip/fine", "content": "fine"},
    ]
    listing = folder / "mixed.ndjson"
    listing.write_text("".join(json.dumps(line) + "\n" for line in lines))
    mine = run.local("import", str(listing), "--skip-errors")
    theirs = run.remote("import", str(listing), "--skip-errors")
    same_result(mine, theirs)
    assert "mixed.ndjson line 2: cannot read missing.txt" in theirs.stderr
    assert "mixed.ndjson line 3: unknown fields" in theirs.stderr
    assert theirs.out.startswith("added 2\tunchanged 0\tskipped 2\t")


def test_an_unchanged_reimport_adds_nothing(run, tmp_path):
    source = tmp_path / "tree"
    make_tree(source)
    assert run.remote("import", str(source), "--prefix", "again/").code == 0
    before = run.log_length()
    again = run.remote("import", str(source), "--prefix", "again/", "--json")
    assert again.code == 0, again.stderr
    document = json.loads(again.stdout)
    assert (document["added"], document["unchanged"], document["bytes_written"]) == (0, 5, 0)
    assert run.log_length() == before
    assert run.remote("import", str(source), "--prefix", "again/").out.startswith("added 0\tunchanged 5\tskipped 2\t")


# ============================================================ errors: nothing committed, local exit codes
@pytest.mark.parametrize(
    "text",
    [
        '{"key": "bad/1", "content": "x"}\n{"key": "bad/2", "content": 5}\n',
        '{"key": "bad/1", "content": "x"}\nnot json\n',
        '{"key": "bad/1", "content": "x"}\n{"key": "bad/\\t", "content": "x"}\n',
        '{"key": "bad/1", "content": "x"}\n{"key": "bad/3", "path": "/definitely/not/here"}\n',
    ],
)
def test_a_bad_line_fails_like_locally_and_commits_nothing(run, tmp_path, text):
    listing = tmp_path / "bad.jsonl"
    listing.write_text(text)
    before = run.log_length()
    mine, theirs = run.local("import", str(listing)), run.remote("import", str(listing))
    assert mine.code == 2
    same_result(mine, theirs)
    assert "bad.jsonl line 2" in theirs.stderr and theirs.stderr.count("\n") == 1
    assert run.log_length() == before
    assert run.remote("get", "bad/1").code == 3


def test_a_bad_first_line_of_a_large_body_is_answered_early(run, tmp_path):
    listing = tmp_path / "large.jsonl"
    filler = json.dumps({"key": "early/fill", "content": "x" * 4000}) + "\n"
    with open(listing, "w") as handle:
        handle.write('{"key": "early/bad", "what": 1}\n')
        for _ in range(6000):  # ~24 MB after the bad line: streamed through the gateway, not buffered
            handle.write(filler)
    before = run.log_length()
    started = time.monotonic()
    theirs = run.remote("import", str(listing))
    assert theirs.code == 2 and "large.jsonl line 1: unknown fields" in theirs.stderr, theirs.stderr
    assert time.monotonic() - started < 60
    assert run.log_length() == before


def test_refusals_have_the_local_exit_codes(run, server, tmp_path):
    for args in (["import", str(tmp_path / "nothing-here")], ["import", str(Path(__file__))], ["import", "-"]):
        mine, theirs = run.local(*args), run.remote(*args)
        assert mine.code == 2
        same_result(mine, theirs)
    damaged = tmp_path / "damaged.tar.gz"
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo("x")
        info.size = 100_000
        tar.addfile(info, io.BytesIO(os.urandom(100_000)))
    damaged.write_bytes(buffer.getvalue()[:-5000])
    before = run.log_length()
    mine, theirs = run.local("import", str(damaged)), run.remote("import", str(damaged))
    assert (theirs.code, mine.code) == (2, 2), theirs.stderr
    assert "damaged" in theirs.stderr
    assert run.log_length() == before


def test_a_read_token_is_refused_like_other_writes(run, server, tmp_path):
    source = tmp_path / "tree"
    source.mkdir()
    (source / "f").write_bytes(b"f")
    read_token = tmp_path / "read-token"
    read_token.write_text(server.read_token)
    before = run.log_length()
    refused = run.remote("import", str(source), token=read_token)
    put = run.remote("put", "k", token=read_token, stdin=b"x")
    assert refused.code == put.code == 12
    assert "write" in refused.stderr and refused.stdout == b""
    assert run.log_length() == before


# ============================================================ HTTP level: hang-ups, idempotency, media types
def tar_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def post_import(server, body: bytes, headers: dict | None = None, query: str = ""):
    return server.request(
        "POST", "/v1/import" + query, body=body, headers={"Content-Type": "application/x-tar", **(headers or {})}
    )


def tmp_files(store: Path) -> list[Path]:
    return [path for path in (store / "objects").rglob(".tmp-*")]


def hang_up(server, head_extra: str, sent: bytes, hold_until=None, timeout: float = 30) -> None:
    """Send a request head and part of a body, then close the connection (once hold_until() is true, if given)."""
    import socket

    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as sock:
        head = (
            "POST /v1/import?prefix=hangup/ HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {server.write_token}\r\nContent-Type: application/x-tar\r\n{head_extra}\r\n"
        )
        sock.sendall(head.encode() + sent)
        deadline = time.monotonic() + timeout
        while hold_until is not None and not hold_until():
            assert time.monotonic() < deadline, "the worker never read the body that was sent"
            time.sleep(0.02)


def wait_until_finished(server, seen: int, request_id: str, timeout: float = 30) -> None:
    """Until the gateway has logged the request and the worker has let go of its Idempotency-Key (no more 409)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and server.log().count("POST /v1/import") <= seen:
        time.sleep(0.05)
    while time.monotonic() < deadline:
        probe = post_import(server, b"", {"Idempotency-Key": request_id}, "?prefix=hangup/")
        if probe.status != 409:
            assert probe.status == 400, probe.body  # the retry of a request that failed: an empty body
            return
        time.sleep(0.05)
    raise AssertionError(f"the hang-up was not handled within {timeout} s:\n{server.log()[-2000:]}")


@pytest.mark.parametrize("framing", ["chunked-mid-member", "chunked-complete-tar-no-end", "length-complete-tar-short"])
def test_a_client_hang_up_mid_upload_commits_nothing(run, server, framing):
    """Cut off mid-member, or after a complete tar (end-of-archive blocks and all) but before the body's end.

    In the second and third case the connection stays open until the worker has read the big member
    (its loose object exists), so the worker has everything a tar reader needs: it must still wait
    for the body's end, which never comes, and commit nothing.
    """
    from imstore.hashing import blake3

    big = os.urandom(9 << 20)  # above LOOSE_MIN: written loose as it streams in, which shows it was read
    # Trailing zero records (which tar readers ignore) let the reader see the end-of-archive blocks
    # without waiting for bytes that never come.
    archive = tar_bytes({"one": os.urandom(700_000), "big": big}) + bytes(4 * tarfile.RECORDSIZE)
    digest = blake3(big).hexdigest()
    loose = server.store / "objects" / digest[:2] / digest[2:]
    request_id = f"hangup-{framing}-{os.urandom(6).hex()}"
    head = f"Idempotency-Key: {request_id}\r\n"
    hold = None
    if framing == "chunked-mid-member":
        head, sent = head + "Transfer-Encoding: chunked\r\n", b"%x\r\n%s\r\n" % (900_000, archive[:900_000])
    elif framing == "chunked-complete-tar-no-end":  # every member and the end-of-archive blocks, but not the last chunk
        head, sent, hold = head + "Transfer-Encoding: chunked\r\n", b"%x\r\n%s\r\n" % (len(archive), archive), loose.exists
    else:  # the whole tar, but fewer bytes than Content-Length promised
        head, sent, hold = head + f"Content-Length: {len(archive) + 10_000}\r\n", archive, loose.exists
    before = run.log_length()
    seen = server.log().count("POST /v1/import")
    hang_up(server, head, sent, hold)
    wait_until_finished(server, seen, request_id)
    assert run.log_length() == before
    assert run.remote("get", "hangup/one").code == 3
    assert not tmp_files(server.store)
    verified = run.served("verify")
    assert verified.code == 0, verified.out + verified.stderr


def test_an_idempotency_key_retry_makes_one_batch(run, server):
    body = tar_bytes({"x": unique("x"), "y": unique("y")})
    headers = {"Idempotency-Key": "import-retry-" + os.urandom(6).hex(), "X-Imstore-Message": "once"}
    before = run.log_length()
    first = post_import(server, body, headers, "?prefix=idem/")
    assert first.status == 201, first.body
    second = post_import(server, body, headers, "?prefix=idem/")
    assert second.status == 201 and second.json() == first.json()
    assert first.json()["added"] == 2
    assert run.log_length() == before + 2
    other = post_import(server, body, headers, "?prefix=elsewhere/")
    assert other.status == 422
    fresh = post_import(server, body, {"Idempotency-Key": "import-fresh-" + os.urandom(6).hex()}, "?prefix=idem/")
    assert fresh.status == 200 and fresh.json()["unchanged"] == 2 and fresh.json()["added"] == 0
    assert run.log_length() == before + 2


def test_http_refusals(server):
    odd = server.request("POST", "/v1/import", body=b"<xml/>", headers={"Content-Type": "text/xml"})
    assert odd.status == 415 and odd.headers["Content-Type"] == "application/problem+json"
    line = json.dumps({"key": "srv/p", "path": "/etc/hostname"}).encode() + b"\n"
    refused = server.request("POST", "/v1/import?name=up.jsonl", body=line, headers={"Content-Type": "application/x-ndjson"})
    assert refused.status == 400 and "up.jsonl line 1" in refused.json()["detail"], refused.body
    assert refused.json()["exit_code"] == 2
    sniffed = server.request("POST", "/v1/import", body=b'{"key": "srv/sniffed", "content": "s"}\n', headers={})
    assert sniffed.status == 201 and sniffed.json()["added"] == 1
    empty = server.request("POST", "/v1/import", body=b"", headers={})
    assert empty.status == 400
    read_only = server.request("POST", "/v1/import", body=tar_bytes({"r": b"r"}), token="read")
    assert read_only.status == 403
    assert server.request("GET", "/v1/import").status == 405


def test_a_refusal_is_answered_while_the_body_is_still_coming(server):
    """The worker refuses line 1 while the client is still sending: the answer must come now, not after the body."""
    import socket

    lines = b'{"key": "open/bad", "colour": 1}\n' + b'{"key": "open/x", "content": "x"}\n' * 20_000
    with socket.create_connection(("127.0.0.1", server.port), timeout=15) as sock:
        head = (
            "POST /v1/import?name=open.jsonl HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            f"Authorization: Bearer {server.write_token}\r\nContent-Type: application/x-ndjson\r\n\r\n"
        )
        sock.sendall(head.encode() + b"%x\r\n%s\r\n" % (len(lines), lines))  # and the body never ends
        received = b""
        while b"\r\n\r\n" not in received or len(received.partition(b"\r\n\r\n")[2]) < 50:
            piece = sock.recv(65536)  # the socket timeout bounds the wait
            assert piece, received
            received += piece
    status_line, _, rest = received.partition(b"\r\n")
    assert status_line.split()[1] == b"400", received
    assert b"open.jsonl line 1: unknown fields" in rest


def test_max_body_limits_a_whole_import(shared_server, tmp_path):
    """--max-body applies to the one request an import is: over it is exit 2 (HTTP 413) and nothing is committed."""
    token_file = tmp_path / "token"
    token_file.write_text(shared_server.write_token)
    token_file.chmod(0o600)  # a token file others can read is warned about
    remote = ["--remote", shared_server.url, "--token-file", str(token_file)]
    source = tmp_path / "tree"
    source.mkdir()
    for number in range(3):
        (source / f"part{number}").write_bytes(os.urandom(600_000))  # 1.8 MB in all, over the 1M limit
    before = len(json.loads(run_cli_in_process([*remote, "log", "--json"]).stdout))
    refused = run_cli_in_process([*remote, "import", str(source), "--prefix", "limited/"])
    assert refused.code == 2 and "limit" in refused.stderr, refused.stderr
    assert len(json.loads(run_cli_in_process([*remote, "log", "--json"]).stdout)) == before
    (source / "part1").unlink()
    (source / "part2").unlink()
    assert run_cli_in_process([*remote, "import", str(source), "--prefix", "limited/"]).code == 0


# ============================================================ D8, S1: compressed streams end and expand as files do
def gz_tar(members: dict[str, bytes], mode: str = "w:gz") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def the_cause(stderr: str) -> str:
    return stderr.strip().rsplit(": ", 1)[-1]


@pytest.mark.parametrize("cut", ["half", "trailer"])
@pytest.mark.parametrize("mode, suffix", [("w:gz", ".tar.gz"), ("w:xz", ".tar.xz"), ("w:bz2", ".tar.bz2")])
def test_a_truncated_compressed_tar_commits_nothing_remotely_as_locally(run, tmp_path, cut, mode, suffix):
    """D8: a .tar.gz cut in half was one partial batch (201, 10 of 20 members) over HTTP and exit 2 locally.
    Cut anywhere, even only in its last bytes (the gzip CRC and length), it is exit 2 everywhere, nothing stored."""
    whole = gz_tar({f"m{number:02}": os.urandom(30_000) for number in range(20)}, mode)
    archive = tmp_path / f"cut-{cut}{suffix}"
    archive.write_bytes(whole[: len(whole) // 2] if cut == "half" else whole[:-4])
    prefix = f"cut-{cut}{suffix}/"
    before = run.log_length()
    mine = run.local("import", str(archive), "--prefix", prefix)
    theirs = run.remote("import", str(archive), "--prefix", prefix)
    mine_streamed = run.local("import", "-", "--prefix", prefix, stdin=archive.read_bytes())
    streamed = run.remote("import", "-", "--prefix", prefix, stdin=archive.read_bytes())
    assert (mine.code, theirs.code, mine_streamed.code, streamed.code) == (2, 2, 2, 2), (mine.stderr, theirs.stderr, streamed.stderr)
    # The same cause as locally. (Where it is noticed, "in member m09" or "after m09", may differ by a member:
    # a file and a stream are read ahead in different steps.)
    assert the_cause(theirs.stderr) == the_cause(mine.stderr), (mine.stderr, theirs.stderr)
    assert the_cause(streamed.stderr) == the_cause(mine_streamed.stderr), (mine_streamed.stderr, streamed.stderr)
    assert run.log_length() == before
    assert run.remote("get", prefix + "m00").code == 3


def test_a_tar_gz_cut_where_a_member_begins_commits_nothing_remotely_as_locally(run, tmp_path):
    """D8 as found: the gzip stream breaks off exactly where member 11 of 20 begins, so what it holds
    decompresses to 10 whole members. A tar reader in stream mode took that for the whole archive."""
    import zlib

    plain = tar_bytes({f"m{number:02}": os.urandom(30_000) for number in range(20)})
    with tarfile.open(fileobj=io.BytesIO(plain)) as tar:
        boundary = tar.getmembers()[10].offset
    compressor = zlib.compressobj(6, zlib.DEFLATED, 31)  # 31: the gzip format
    archive = tmp_path / "cut-boundary.tar.gz"
    archive.write_bytes(compressor.compress(plain[:boundary]) + compressor.flush(zlib.Z_FULL_FLUSH))
    before = run.log_length()
    mine = run.local("import", str(archive), "--prefix", "cut-boundary/")
    theirs = run.remote("import", str(archive), "--prefix", "cut-boundary/")
    assert (mine.code, theirs.code) == (2, 2), (mine.stderr, theirs.stderr)
    assert the_cause(theirs.stderr) == the_cause(mine.stderr) == "Compressed file ended before the end-of-stream marker was reached"
    assert run.log_length() == before


def test_max_body_bounds_what_an_import_expands_to(shared_server, tmp_path):
    """S1: a few KB of .tar.gz holding megabytes of zeros passed --max-body (1M here) and was stored in full.
    What the tar expands to is bounded by the same limit: 413, exit 2, nothing committed."""
    from imstore.hashing import blake3

    zeros = bytes(9 << 20)  # above LOOSE_MIN: it would be written loose as it streams in
    body = gz_tar({"zeros": zeros, "small": b"s"})
    assert len(body) < 100_000
    token_file = tmp_path / "token"
    token_file.write_text(shared_server.write_token)
    token_file.chmod(0o600)  # a token file others can read is warned about
    remote = ["--remote", shared_server.url, "--token-file", str(token_file)]
    before = len(json.loads(run_cli_in_process([*remote, "log", "--json"]).stdout))
    reply = shared_server.request("POST", "/v1/import?prefix=bomb/", body=body, headers={"Content-Type": "application/gzip"})
    assert reply.status == 413, reply.body
    assert "expands to more than" in reply.json()["detail"] and reply.json()["exit_code"] == 2
    archive = tmp_path / "bomb.tar.gz"
    archive.write_bytes(body)
    refused = run_cli_in_process([*remote, "import", str(archive), "--prefix", "bomb/"])
    assert refused.code == 2 and "expands to more than" in refused.stderr, refused.stderr
    assert len(json.loads(run_cli_in_process([*remote, "log", "--json"]).stdout)) == before
    digest = blake3(zeros).hexdigest()
    assert not (shared_server.store / "objects" / digest[:2] / digest[2:]).exists()
    fits = gz_tar({"zeros": bytes(500_000)})
    reply = shared_server.request("POST", "/v1/import?prefix=fits/", body=fits, headers={"Content-Type": "application/gzip"})
    assert reply.status == 201, reply.body
