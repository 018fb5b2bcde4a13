"""`imstore get --batch` / `cat --batch`: git cat-file --batch framing, one store for many reads."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest
from batchprocess import read_line, running

from imstore import Store
from imstore.hashing import hash_bytes

IMSTORE = [sys.executable, "-m", "imstore"]
pytestmark = pytest.mark.timeout(120)

BINARY = b"line one\nline two\x00\x00\r\n\xff\xfe tail without newline"


def frames(stdout: bytes) -> list[tuple[list[str], bytes | None]]:
    """Split batch output into (header fields, bytes or None), reading SIZE bytes after a full header."""
    answers, at = [], 0
    while at < len(stdout):
        end = stdout.index(b"\n", at)
        fields = stdout[at:end].decode("utf-8").split("\t")
        at = end + 1
        if fields[-1] in ("missing", "deleted", "ambiguous"):
            answers.append((fields, None))
            continue
        size = int(fields[-1])
        answers.append((fields, stdout[at : at + size]))
        assert stdout[at + size : at + size + 1] == b"\n", "each object ends with a newline"
        at += size + 1
    return answers


def test_get_batch_round_trips_binary_bytes_and_keys_with_spaces(cli, store):
    first = store.put("a key with spaces", BINARY).version
    store.put("a key with spaces", b"second")
    store.put("empty", b"")
    result = cli("get", "--batch", stdin=b"a key with spaces\t1\na key with spaces\nempty\n")
    assert result.code == 0, result.stderr
    assert frames(result.stdout) == [
        (["a key with spaces", "1", first.hash, str(len(BINARY))], BINARY),
        (["a key with spaces", "2", hash_bytes(b"second"), "6"], b"second"),
        (["empty", "1", hash_bytes(b""), "0"], b""),
    ]


def test_missing_deleted_and_unparseable_lines(cli, store):
    store.put("gone", b"x")
    store.delete("gone")
    store.put("here", b"y")
    lines = b"gone\ngone\t1\ngone\t2\nnever\nhere\t7\nhere\tnot-a-number\n\n\xff\xfe\nhere"  # the last has no newline
    result = cli("get", "--batch-check", stdin=lines)
    assert result.code == 0, result.stderr
    assert result.stdout.split(b"\n") == [
        b"gone\tdeleted",
        b"gone\t1\t" + hash_bytes(b"x").encode() + b"\t1",
        b"gone\tdeleted",
        b"never\tmissing",
        b"here\tmissing",
        b"here\tmissing",
        b"\tmissing",
        b"\xff\xfe\tmissing",  # echoed byte for byte
        b"here\t1\t" + hash_bytes(b"y").encode() + b"\t1",
        b"",
    ]


def test_batch_check_json_lines_describe_without_bytes(cli, store):
    store.put("k", b"hello", content_type="text/plain")
    result = cli("--json", "get", "--batch-check", stdin=b"k\nnope\n")
    assert result.code == 0, result.stderr
    documents = [json.loads(line) for line in result.stdout.splitlines()]
    assert documents == [
        {"key": "k", "status": "ok", "version": 1, "hash": hash_bytes(b"hello"), "size": 5, "content_type": "text/plain"},
        {"key": "nope", "status": "missing"},
    ]


def test_cat_batch_by_hash_and_prefix(cli, store):
    object_id = store.put("k", BINARY).version.hash
    query = f"{object_id}\n{object_id[:10]}\n{'0' * 64}\nxyz\n".encode()
    result = cli("cat", "--batch", stdin=query)
    assert result.code == 0, result.stderr
    assert frames(result.stdout) == [
        ([object_id, str(len(BINARY))], BINARY),
        ([object_id, str(len(BINARY))], BINARY),
        (["0" * 64, "missing"], None),
        (["xyz", "missing"], None),
    ]


@pytest.mark.parametrize("command", ["get", "cat"])
def test_a_damaged_object_stops_the_batch_with_exit_5_before_its_header(cli, store, store_path, command):
    good = store.put("good", b"fine").version.hash
    bad = store.put("bad", os.urandom(5000)).version.hash
    path = store_path / "objects" / bad[:2] / bad[2:]
    os.chmod(path, 0o644)
    raw = bytearray(path.read_bytes())
    raw[2500] ^= 0x01
    path.write_bytes(bytes(raw))
    lines = "good\nbad\ngood\n" if command == "get" else f"{good}\n{bad}\n{good}\n"
    result = cli("--no-cache", command, "--batch", stdin=lines.encode())
    assert result.code == 5, result.stderr
    assert len(frames(result.stdout)) == 1 and frames(result.stdout)[0][1] == b"fine"  # nothing of the damaged one
    assert bad in result.stderr or "damaged" in result.stderr


def test_batch_takes_no_key_and_json_needs_batch_check(cli):
    assert cli("get", "k", "--batch").code == 2
    assert cli("get", "--batch", "--version", "1").code == 2
    assert cli("--json", "get", "--batch", stdin=b"k\n").code == 2
    assert cli("cat", "abcdef12", "--batch").code == 2
    assert cli("get").code == 2


def test_a_key_written_by_another_process_is_seen_by_the_next_line(store_path: Path):
    with running([*IMSTORE, "--store", str(store_path), "get", "--batch-check"]) as process:
        deadline = time.monotonic() + 60
        process.stdin.write(b"later\n")
        process.stdin.flush()
        assert read_line(process, deadline) == b"later\tmissing\n"  # answered before stdin ends: flushed
        with Store.open(store_path) as other:
            first = other.put("later", b"one").version
        process.stdin.write(b"later\n")
        process.stdin.flush()
        assert read_line(process, deadline) == f"later\t1\t{first.hash}\t3\n".encode()
        with Store.open(store_path) as other:
            second = other.put("later", b"two!").version
        process.stdin.write(b"later\n")
        process.stdin.close()
        assert read_line(process, deadline) == f"later\t2\t{second.hash}\t4\n".encode()
        assert process.wait(30) == 0


def test_objects_past_whole_are_verified_then_streamed(cli, store, store_path, monkeypatch):
    from imstore import readbatch

    monkeypatch.setattr(readbatch, "WHOLE", 100)  # every object here takes the large-object path
    big = os.urandom(5000)
    store.put("big", big)
    store.put("small", b"s")
    result = cli("--no-cache", "get", "--batch", stdin=b"big\nsmall\n")
    assert result.code == 0, result.stderr
    assert frames(result.stdout) == [(["big", "1", hash_bytes(big), "5000"], big), (["small", "1", hash_bytes(b"s"), "1"], b"s")]
    path = store_path / "objects" / hash_bytes(big)[:2] / hash_bytes(big)[2:]
    os.chmod(path, 0o644)
    path.write_bytes(big[:-1] + bytes([big[-1] ^ 1]))  # the last byte: the damage shows only at the end
    result = cli("--no-cache", "get", "--batch", stdin=b"small\nbig\n")
    assert result.code == 5
    assert result.stdout == f"small\t1\t{hash_bytes(b's')}\t1\n".encode() + b"s\n"  # no header for the damaged one
