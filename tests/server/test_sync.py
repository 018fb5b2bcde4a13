"""Sync mode: `serve --sync-standbys N --sync-timeout S` answers a write only once N standbys hold it durably."""

from __future__ import annotations

from pathlib import Path

from imstore.server.auth import TokenStore
from tests.server.conftest import key_url
from tests.server.test_standby import poll, standby_of  # noqa: F401 -- standby_of is a fixture

SEGMENT = Path("log") / "00000000000000000000.log"


def replicate_token(primary) -> str:
    return TokenStore(primary.store).create(f"standby{len(TokenStore(primary.store).list())}", "replicate")


def test_an_acknowledged_write_is_already_durable_on_the_standby(start, standby_of):  # noqa: F811
    primary = start("--workers", "2", "--sync-standbys", "1", "--sync-timeout", "20")
    standby = standby_of(primary, token=replicate_token(primary))
    for number in range(20):
        reply = primary.request("PUT", key_url(f"k{number}"), f"value {number}".encode())
        assert reply.status == 201, reply.body
        # Acknowledged means the standby's log already holds the frame: no waiting, no polling here.
        assert (standby.store / SEGMENT).read_bytes() == (primary.store / SEGMENT).read_bytes()
    assert primary.request("DELETE", key_url("k0")).status == 200
    assert (standby.store / SEGMENT).read_bytes() == (primary.store / SEGMENT).read_bytes()


def test_with_no_standby_a_write_is_503_at_the_timeout_committed_and_a_retry_answers_once_replicated(start, standby_of):  # noqa: F811
    primary = start("--workers", "1", "--sync-standbys", "1", "--sync-timeout", "1")
    headers = {"Idempotency-Key": "sync-retry-1"}
    refused = primary.request("PUT", key_url("alone"), b"committed here", headers=headers)
    assert refused.status == 503 and refused.headers["Retry-After"]
    assert refused.json()["error"] == "NotReplicated" and "committed" in refused.json()["detail"]
    assert primary.request("GET", key_url("alone"), token="read").body == b"committed here"  # the record stays
    standby_of(primary, token=replicate_token(primary))
    retried = poll(lambda: (r := primary.request("PUT", key_url("alone"), b"committed here", headers=headers)).status == 201 and r,
                   "the retry is answered once a standby holds the write")  # fmt: skip
    assert retried.json()["version"] == 1  # the same version: the retry wrote nothing new


def test_a_read_token_may_not_follow_and_a_replicate_token_may_not_write(start):
    primary = start("--workers", "1", "--sync-standbys", "1", "--sync-timeout", "1")
    refused = primary.request("GET", "/v1/replication/log?from=0", token="read")  # the feed is for standbys only (R6)
    assert refused.status == 403 and b"replicate" in refused.body
    reply = primary.request("PUT", key_url("k"), b"v")  # no standby holds it: not acknowledged
    assert reply.status == 503 and reply.json()["error"] == "NotReplicated"
    writer = {"Authorization": f"Bearer {replicate_token(primary)}"}
    assert primary.request("PUT", key_url("r"), b"v", headers=writer, token=None).status == 403  # nor can a replicate token write
