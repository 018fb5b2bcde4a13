"""Promotion and fencing with real servers: a running standby promoted by `imstore promote` takes writes (R9); an old
primary restarted with --peer, or asked for frames by a standby of a higher epoch, is fenced (R10)."""

from __future__ import annotations

import json
import threading

from imstore import Store
from tests.conftest import run_cli_process
from tests.server.conftest import free_port, key_url
from tests.server.test_standby import SEGMENT, poll, same_log, standby_of  # noqa: F401 -- standby_of is a fixture
from tests.server.test_sync import replicate_token


def health(server) -> dict:
    return server.request("GET", "/healthz", token=None).json()


def writable(server) -> int:
    return server.request("GET", "/healthz/writable", token=None).status


def promote(server) -> dict:
    result = run_cli_process(["--store", str(server.store), "promote", "--json"])
    assert result.code == 0, result.stderr
    return json.loads(result.out)


def test_a_promoted_standby_takes_writes_and_the_old_primary_restarted_with_peer_is_fenced(start, standby_of):  # noqa: F811
    primary = start("--workers", "1")
    assert primary.request("PUT", key_url("before"), b"one").status == 201
    standby = standby_of(primary)
    poll(lambda: same_log(primary, standby), "the standby holds the primary's log")
    assert health(standby)["role"] == "standby" and writable(standby) == 503
    assert standby.request("PUT", key_url("early"), b"no").status == 503

    promoted = promote(standby)
    assert promoted["epoch"] == 1 and promoted["fork_seq"] == 1
    poll(lambda: writable(standby) == 200, "the running standby notices it was promoted")
    document = health(standby)
    assert (document["role"], document["epoch"], document["head"]["seq"]) == ("primary", 1, 2)
    assert standby.request("PUT", key_url("after"), b"two").status == 201  # the primary's write token works here too
    assert standby.request("GET", key_url("after"), token="read").body == b"two"

    primary.process.kill()
    primary.process.wait()
    old = start("--workers", "1", "--peer", standby.url)
    poll(lambda: health(old)["role"] == "fenced", "the old primary learns from its peer that it was superseded")
    refused = old.request("PUT", key_url("lost"), b"never")
    assert refused.status == 503 and refused.headers["Retry-After"] and "superseded" in refused.json()["detail"]
    assert writable(old) == 503
    assert health(old)["epoch"] == 0 and "epoch 1" in health(old)["fenced_by"]
    verified = run_cli_process(["--store", str(standby.store), "verify", "--json"])
    assert verified.code == 0 and json.loads(verified.out)["ok"], verified.out


def test_a_peer_that_cannot_be_reached_does_not_stop_writes(start):
    nobody = f"http://127.0.0.1:{free_port()}"
    primary = start("--workers", "1", "--peer", nobody)
    reply = poll(lambda: (r := primary.request("PUT", key_url("k"), b"v")).status == 201 and r, "the peer check ends")
    assert reply.status == 201 and health(primary)["role"] == "primary" and writable(primary) == 200


def test_in_sync_mode_a_superseded_primary_acknowledges_nothing(start, standby_of):  # noqa: F811
    primary = start("--workers", "1", "--sync-standbys", "1", "--sync-timeout", "1")
    standby = standby_of(primary, token=replicate_token(primary))
    assert primary.request("PUT", key_url("k1"), b"acknowledged").status == 201
    promote(standby)
    poll(lambda: writable(standby) == 200, "the standby is promoted")
    # The promoted standby pulls no more: the old primary's next write is never confirmed replicated.
    refused = primary.request("PUT", key_url("k2"), b"not acknowledged")
    assert refused.status == 503 and refused.json()["error"] == "NotReplicated"
    # A standby of the higher epoch asking it for frames proves it was superseded: not counted, and fenced.
    end = (primary.store / "log" / "00000000000000000000.log").stat().st_size
    headers = {"Authorization": f"Bearer {replicate_token(primary)}", "X-Imstore-Epoch": "1", "X-Imstore-Node": "new:/x"}
    assert primary.request("GET", f"/v1/replication/log?from={end}", headers=headers, token=None).status == 200
    assert health(primary)["role"] == "fenced"
    assert primary.request("PUT", key_url("k3"), b"refused").status == 503


def test_a_standby_promoted_while_its_primary_writes_forks_cleanly(start, standby_of):  # noqa: F811
    primary = start("--workers", "1")
    standby = standby_of(primary)
    stop = threading.Event()

    def write() -> None:
        for number in range(10_000):  # bounded; stopped long before
            if stop.is_set():
                return
            primary.request("PUT", key_url(f"busy{number}"), b"x" * 100)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    try:
        poll(lambda: health(standby)["head"]["seq"] >= 20, "the standby follows a busy primary")
        promote(standby)
        poll(lambda: writable(standby) == 200, "the standby notices the promotion while frames keep coming")
    finally:
        stop.set()
        writer.join(30)
    ours, theirs = (standby.store / SEGMENT).read_bytes(), (primary.store / SEGMENT).read_bytes()
    with Store.open(standby.store) as store:
        fork = store.indexer.current().epochs()[0]
        (seq, offset), = [(r.seq, f.offset) for f in store.log.scan(0) for r in f.records if r.is_epoch]
    assert fork[1] == seq and theirs[:offset] == ours[:offset]  # the new history forks from a prefix of the old one
    assert standby.request("PUT", key_url("mine"), b"new primary").status == 201
    verified = run_cli_process(["--store", str(standby.store), "verify", "--json"])
    assert verified.code == 0 and json.loads(verified.out)["ok"], verified.out


def test_a_promoted_primary_counts_no_acknowledgement_from_a_lower_epoch(start, standby_of):  # noqa: F811
    first = start("--workers", "1")
    standby = standby_of(first, token=replicate_token(first))
    poll(lambda: same_log(first, standby), "the standby holds the log")
    standby.stop()
    promote(standby)
    new = start("--workers", "1", "--sync-standbys", "1", "--sync-timeout", "1", store=standby.store)
    token = replicate_token(new)
    end = (new.store / SEGMENT).stat().st_size

    def ask(epoch: str) -> int:
        headers = {"Authorization": f"Bearer {token}", "X-Imstore-Epoch": epoch, "X-Imstore-Node": f"n{epoch}:/x"}
        return new.request("GET", f"/v1/replication/log?from={end + 10_000}", headers=headers, token=None).status

    assert ask("0") in (200, 416)  # a node of epoch 0 (an old primary, maybe diverged): served, never counted
    refused = new.request("PUT", key_url("a"), b"v")
    assert refused.status == 503 and refused.json()["error"] == "NotReplicated"
    assert ask("1") in (200, 416)  # a standby of this epoch: its request acknowledges everything before the offset
    assert new.request("PUT", key_url("b"), b"v").status == 201
    assert health(new)["role"] == "primary"
