"""The replication routes of a real `imstore serve`, and clone / pull over HTTP (a replicate token)."""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path

from imstore.feed import LOG_END_HEADER
from tests.conftest import run_cli_process
from tests.server.conftest import key_url

SEGMENT = Path("log") / "00000000000000000000.log"


def put_some(server, count: int, prefix: str = "k", size: int = 300) -> None:
    for number in range(count):
        assert server.request("PUT", key_url(f"{prefix}{number}"), os.urandom(size)).status == 201


def test_clone_and_pull_over_http_give_the_primary_s_log_byte_for_byte(start, tmp_path: Path):
    server = start("--workers", "2")
    put_some(server, 5)
    copy = tmp_path / "copy"
    token = {"IMSTORE_TOKEN": server.replicate_token}
    cloned = run_cli_process(["clone", server.url, str(copy), "--json"], env=token)
    assert cloned.code == 0, cloned.stderr
    assert json.loads(cloned.out)["records"] == 5
    put_some(server, 3, prefix="later")
    pulled = run_cli_process(["--store", str(copy), "pull", "--json"], env=token)
    assert pulled.code == 0 and json.loads(pulled.out)["records"] == 3, pulled.stderr
    assert (copy / SEGMENT).read_bytes() == (server.store / SEGMENT).read_bytes()
    assert run_cli_process(["--store", str(copy), "verify"]).code == 0
    # The primary's tokens came along: the standby will take the same read token.
    assert (copy / "tokens").read_bytes() == (server.store / "tokens").read_bytes()


def test_the_feed_needs_a_token(start, tmp_path: Path):
    server = start("--workers", "1")
    assert server.request("GET", "/v1/replication", token=None).status == 401
    refused = run_cli_process(["clone", server.url, str(tmp_path / "copy")], env={"IMSTORE_TOKEN": ""})
    assert refused.code == 12, refused.stderr


def test_frames_from_an_offset_where_no_frame_starts_are_416_with_the_log_end(start):
    server = start("--workers", "1")
    put_some(server, 2)
    end = (server.store / SEGMENT).stat().st_size
    for offset in (1, end + 100):
        reply = server.request("GET", f"/v1/replication/log?from={offset}", token="replicate")
        assert reply.status == 416 and reply.headers[LOG_END_HEADER] == str(end)
    at_end = server.request("GET", f"/v1/replication/log?from={end}", token="replicate")
    assert at_end.status == 200 and at_end.body == b"" and at_end.headers[LOG_END_HEADER] == str(end)


def test_a_long_poll_answers_with_the_frame_written_while_it_waited(start):
    server = start("--workers", "2")
    put_some(server, 1)
    end = (server.store / SEGMENT).stat().st_size
    answer: dict = {}

    def wait_for_frames():
        answer["reply"] = server.request("GET", f"/v1/replication/log?from={end}&wait=20", token="replicate")

    waiter = threading.Thread(target=wait_for_frames)
    waiter.start()
    put_some(server, 1, prefix="while-waiting")
    waiter.join(40)
    reply = answer["reply"]
    assert reply.status == 200 and reply.body  # woken by the write (an empty body would mean it waited it out)
    assert reply.body == (server.store / SEGMENT).read_bytes()[end:]


def test_a_pull_over_http_killed_mid_way_is_finished_by_the_next(start, tmp_path: Path):
    server = start("--workers", "2")
    put_some(server, 4)
    copy = tmp_path / "copy"
    token = {"IMSTORE_TOKEN": server.replicate_token}
    assert run_cli_process(["clone", server.url, str(copy)], env=token).code == 0
    put_some(server, 4, prefix="more")
    killed = run_cli_process(["--store", str(copy), "pull"], env={**token, "IMSTORE_CRASH_AT": "replica-objects-durable"})
    assert killed.code == -signal.SIGKILL, killed.stderr
    resumed = run_cli_process(["--store", str(copy), "pull"], env=token)
    assert resumed.code == 0, resumed.stderr
    assert (copy / SEGMENT).read_bytes() == (server.store / SEGMENT).read_bytes()
    assert run_cli_process(["--store", str(copy), "verify"]).code == 0


def test_a_clone_over_http_takes_the_packs_whole(start, tmp_path: Path):
    from tests.test_replica import import_tree

    server = start("--workers", "2")
    import_tree(server.store, tmp_path, files=80)  # one pack on the primary
    put_some(server, 2)
    listed = server.request("GET", "/v1/replication/packs", token="replicate")
    assert listed.status == 200
    [pack] = json.loads(listed.body)["packs"]
    on_disk = server.store / "objects" / "pack" / f"{pack['name']}.pack"
    assert pack["size"] == on_disk.stat().st_size
    index = server.request("GET", f"/v1/replication/packs/{pack['name']}.idx", token="replicate")
    assert index.status == 200 and index.body == on_disk.with_suffix(".idx").read_bytes()
    for wrong in ("..%2Fconfig", "pack-" + "0" * 40 + ".pack", "tokens"):
        assert server.request("GET", f"/v1/replication/packs/{wrong}", token="replicate").status == 404
    assert server.request("GET", "/v1/replication/packs", token=None).status == 401
    copy = tmp_path / "copy"
    cloned = run_cli_process(["clone", server.url, str(copy), "--json"], env={"IMSTORE_TOKEN": server.replicate_token})
    assert cloned.code == 0, cloned.stderr
    assert json.loads(cloned.out)["objects"] == 82
    assert (copy / "objects" / "pack" / on_disk.name).read_bytes() == on_disk.read_bytes()
    assert (copy / SEGMENT).read_bytes() == (server.store / SEGMENT).read_bytes()
    assert run_cli_process(["--store", str(copy), "verify"]).code == 0
