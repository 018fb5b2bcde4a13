"""imstore clone / pull: byte-identical logs, every frame and object checked, divergence refused, kills survived."""

from __future__ import annotations

import json
import os
import signal
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import msgpack
import pytest

from imstore import Store
from imstore.errors import BadUpstream, Diverged
from imstore.feed import LOG_END_HEADER, PathSource, describe, object_stream, open_local, read_frames
from imstore.records import HEADER, HEADER_SIZE, frame_bytes
from imstore.replica import check_frames, clone, pull
from tests.conftest import run_cli_in_process, run_cli_process

SEGMENT = Path("log") / "00000000000000000000.log"


def fill(root: Path, count: int = 5, prefix: str = "k", size: int = 100) -> None:
    with Store.open(root) as store:
        for number in range(count):
            store.put(f"{prefix}{number}", os.urandom(size))


def import_tree(root: Path, tmp_path: Path, files: int = 80) -> None:
    """An import of many small files: one frame naming them all (a round that writes a pack)."""
    tree = tmp_path / f"tree-{os.urandom(4).hex()}"
    tree.mkdir()
    for number in range(files):
        (tree / f"f{number}").write_bytes(os.urandom(500 + number))
    assert run_cli_in_process(["--store", str(root), "import", str(tree), "--prefix", "t/"]).code == 0


def log_bytes(root: Path) -> bytes:
    return (root / SEGMENT).read_bytes()


def object_files(root: Path) -> set[str]:
    return {str(path.relative_to(root)) for path in (root / "objects").rglob("*") if path.is_file()}


@pytest.fixture
def source(tmp_path: Path) -> Path:
    root = tmp_path / "source"
    Store.init(root)[0].close()
    fill(root)
    import_tree(root, tmp_path)
    return root


# ============================================================ path to path
def test_clone_of_a_path_is_byte_identical_and_verifies_clean(source: Path, tmp_path: Path):
    destination = tmp_path / "copy"
    result = run_cli_in_process(["clone", str(source), str(destination), "--json"])
    assert result.code == 0, result.stderr
    document = json.loads(result.out)
    assert document["records"] == 85 and document["objects"] == 85 and not document["up_to_date"]
    assert log_bytes(destination) == log_bytes(source)
    assert (destination / "config").read_bytes() == (source / "config").read_bytes()
    assert (destination / "upstream").read_text().strip() == str(source)
    verified = run_cli_in_process(["--store", str(destination), "verify", "--json"])
    assert verified.code == 0 and json.loads(verified.out)["ok"]
    with Store.open(destination) as copy, Store.open(source) as original:
        assert copy.get("k3") == original.get("k3")


def test_pull_takes_only_new_frames_and_a_second_pull_says_up_to_date(source: Path, tmp_path: Path):
    destination = tmp_path / "copy"
    assert run_cli_in_process(["clone", str(source), str(destination)]).code == 0
    fill(source, 3, prefix="new")
    pulled = run_cli_in_process(["--store", str(destination), "pull", "--json"])
    assert pulled.code == 0, pulled.stderr
    assert json.loads(pulled.out)["records"] == 3
    assert log_bytes(destination) == log_bytes(source)
    again = run_cli_in_process(["--store", str(destination), "pull"])
    assert again.code == 0 and "already up to date" in again.stderr


def test_a_diverged_source_is_exit_5_naming_the_last_common_record_and_nothing_is_written(source: Path, tmp_path: Path):
    destination = tmp_path / "copy"
    assert run_cli_in_process(["clone", str(source), str(destination)]).code == 0
    fill(destination, 1, prefix="only-here")
    fill(source, 1, prefix="only-there")
    before, objects_before = log_bytes(destination), object_files(destination)
    result = run_cli_in_process(["--store", str(destination), "pull"])
    assert result.code == 5
    assert "diverged" in result.stderr and "the last record they share is seq 85" in result.stderr
    assert log_bytes(destination) == before and object_files(destination) == objects_before


def test_a_source_behind_the_copy_is_refused_as_diverged_saying_it_is_behind(source: Path, tmp_path: Path):
    stale = tmp_path / "stale"
    assert run_cli_in_process(["clone", str(source), str(stale)]).code == 0
    fill(source, 2, prefix="newer")
    copy = tmp_path / "copy"
    assert run_cli_in_process(["clone", str(source), str(copy)]).code == 0
    before = log_bytes(copy)
    result = run_cli_in_process(["--store", str(copy), "pull", str(stale)])
    assert result.code == 5 and "diverged" in result.stderr and "behind this store" in result.stderr
    assert "seq 85" in result.stderr and log_bytes(copy) == before


def test_a_source_of_another_store_is_refused(source: Path, tmp_path: Path):
    other = tmp_path / "other"
    Store.init(other)[0].close()
    result = run_cli_in_process(["--store", str(other), "pull", str(source)])
    assert result.code == 2 and "not this store" in result.stderr


def test_clone_refuses_a_directory_that_is_not_empty(source: Path, tmp_path: Path):
    destination = tmp_path / "busy"
    destination.mkdir()
    (destination / "something").write_text("x")
    result = run_cli_in_process(["clone", str(source), str(destination)])
    assert result.code == 2 and "imstore pull" in result.stderr


def test_tokens_travel_with_the_copy(source: Path, tmp_path: Path):
    from imstore.server.auth import TokenStore

    TokenStore(source).create("reader", "read")
    destination = tmp_path / "copy"
    assert run_cli_in_process(["clone", str(source), str(destination)]).code == 0
    assert [info.name for info in TokenStore(destination).list()] == ["reader"]
    TokenStore(source).revoke("reader")
    assert run_cli_in_process(["--store", str(destination), "pull"]).code == 0
    assert TokenStore(destination).list() == []


# ============================================================ the frame checks, one by one
def new_frames(source: Path, copy: Path) -> tuple[bytes, object]:
    """The source's frames after the copy's head, and the copy's index state."""
    with Store.open(copy) as store:
        state = store.indexer.current().state()
    return read_frames(open_local(source)[0], state.log_end, 1 << 20), state


def test_check_frames_refuses_a_gap_a_wrong_prev_and_a_bad_checksum(source: Path, tmp_path: Path):
    copy = tmp_path / "copy"
    clone(PathSource(source), copy)
    fill(source, 2, prefix="more")
    data, state = new_frames(source, copy)
    assert len(check_frames(data, state.log_end, state.last_hash, state.seq)) == 2
    first_length = HEADER.unpack_from(data)[0] + HEADER_SIZE
    with pytest.raises(BadUpstream, match="chain is broken"):  # a gap: the first new frame left out
        check_frames(data[first_length:], state.log_end, state.last_hash, state.seq)
    with pytest.raises(BadUpstream, match="chain is broken"):
        check_frames(with_wrong_prev(data), state.log_end, state.last_hash, state.seq)
    flipped = bytearray(data)
    flipped[HEADER_SIZE + 5] ^= 0x01
    with pytest.raises(BadUpstream, match="checksum"):
        check_frames(bytes(flipped), state.log_end, state.last_hash, state.seq)
    with pytest.raises(BadUpstream, match="bad length"):
        check_frames(data[:-1], state.log_end, state.last_hash, state.seq)


def with_wrong_prev(data: bytes) -> bytes:
    """The first frame re-encoded with another prev and a correct checksum: only the chain can tell."""
    length = HEADER.unpack_from(data)[0]
    record = msgpack.unpackb(data[HEADER_SIZE : HEADER_SIZE + length], raw=False)
    record["prev"] = b"\x01" * 32
    return frame_bytes(msgpack.packb(record, use_bin_type=True)) + data[HEADER_SIZE + length :]


# ============================================================ a fake upstream that lies
class FakeUpstream:
    """An HTTP source on 127.0.0.1 serving a real store's routes, with one lie told by `tamper`."""

    def __init__(self, root: Path, tamper: str):
        self.root, self.tamper = root, tamper
        self.log, self.objects = open_local(root)
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):  # noqa: N802 -- http.server's name
                fake.answer(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def answer(self, handler: BaseHTTPRequestHandler) -> None:
        parsed = urlparse(handler.path)
        query = {name: values[-1] for name, values in parse_qs(parsed.query).items()}
        if parsed.path == "/v1/replication":
            described = describe(self.root)
            import base64

            body = json.dumps({"store_id": described["store_id"], "config": base64.b64encode(described["config"]).decode(),
                               "log_end": described["log_end"], "tokens": None}).encode()  # fmt: skip
        elif parsed.path == "/v1/replication/log":
            start = int(query["from"])
            body = read_frames(self.log, start, int(query["max_bytes"]))
            if body and start != int(self.tamper_from):  # the divergence probe (our last frame) is answered truly
                body = self.lie_about_frames(body)
        elif parsed.path == "/v1/replication/objects":
            body = b"".join(object_stream(self.log, self.objects, int(query["from"]), int(query["to"])))
            if self.tamper == "object" and body:
                flipped = bytearray(body)
                flipped[40] ^= 0x01  # the first byte of the first object, after its id and length
                body = bytes(flipped)
        else:
            handler.send_error(404)
            return
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(body)))
        handler.send_header(LOG_END_HEADER, str(self.log.end()))
        if self.epoch_header is not None:
            handler.send_header("X-Imstore-Epoch", self.epoch_header)
        handler.end_headers()
        handler.wfile.write(body)

    tamper_from = -1
    epoch_header: str | None = None  # the epoch the fake says it is at (None: says nothing)

    def lie_about_frames(self, body: bytes) -> bytes:
        if self.tamper == "gap":
            return body[HEADER.unpack_from(body)[0] + HEADER_SIZE :]
        if self.tamper == "prev":
            return with_wrong_prev(body)
        if self.tamper == "checksum":
            flipped = bytearray(body)
            flipped[-3] ^= 0x40
            return bytes(flipped)
        return body

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.mark.parametrize("lie", ["gap", "prev", "checksum", "object"])
def test_a_lying_upstream_is_refused_and_nothing_is_written(source: Path, tmp_path: Path, lie: str):
    copy = tmp_path / "copy"
    clone(PathSource(source), copy)
    fill(source, 3, prefix="more")
    with Store.open(copy) as store:
        state = store.indexer.current().state()
    before, objects_before = log_bytes(copy), object_files(copy)
    fake = FakeUpstream(source, lie)
    fake.tamper_from = state.frame_offset
    try:
        result = run_cli_in_process(["--store", str(copy), "pull", fake.url])
    finally:
        fake.close()
    assert result.code == 5, result.stderr
    assert "nothing was appended" in result.stderr
    assert log_bytes(copy) == before and object_files(copy) == objects_before
    honest = run_cli_in_process(["--store", str(copy), "pull", str(source)])  # the same pull from the truth works
    assert honest.code == 0 and log_bytes(copy) == log_bytes(source)


def test_pull_in_python_raises_the_errors_the_cli_maps(source: Path, tmp_path: Path):
    copy = tmp_path / "copy"
    clone(PathSource(source), copy)
    fill(copy, 1, prefix="local")
    fill(source, 1, prefix="remote")
    with Store.open(copy) as store, pytest.raises(Diverged):
        pull(store, PathSource(source))


# ============================================================ kill -9 mid-clone, then pull
@pytest.mark.parametrize("point", ["pack-fsynced", "replica-objects-durable", "log-written", "replica-frames-appended"])
def test_a_clone_killed_mid_way_is_finished_by_pull(source: Path, tmp_path: Path, point: str):
    destination = tmp_path / "copy"
    killed = run_cli_process(["clone", str(source), str(destination)], env={"IMSTORE_CRASH_AT": point})
    assert killed.code == -signal.SIGKILL, killed.stderr
    assert len(log_bytes(destination)) <= len(log_bytes(source))
    resumed = run_cli_process(["--store", str(destination), "pull"])
    assert resumed.code == 0, resumed.stderr
    assert log_bytes(destination) == log_bytes(source)
    verified = run_cli_process(["--store", str(destination), "verify", "--json"])
    assert verified.code == 0 and json.loads(verified.out)["ok"], verified.out
