"""H1: a key's ETag names its version; If-Match takes that ETag or *, decided atomically at the commit."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import pytest

from imstore.hashing import hash_bytes

from .conftest import key_url

pytestmark = pytest.mark.timeout(120)

BIG = 2 << 20  # over the worker's whole-body limit: the body streams into the put


def put(server, key: str, body: bytes, **headers):
    return server.request("PUT", key_url(key), body=body, headers=headers)


def get(server, key: str, **headers):
    return server.request("GET", key_url(key), headers=headers, token="read")


def history(server, key: str) -> list[tuple[int, str]]:
    entries = server.request("GET", "/v1/history/" + key_url(key)[len("/v1/keys/"):], token="read").json()
    return [(entry["version"], entry["op"]) for entry in entries]


def test_a_new_version_that_only_changes_the_type_gets_a_new_etag(module_server):
    key = "h1/type"
    assert put(module_server, key, b"<p>hi</p>", **{"Content-Type": "text/plain"}).status == 201
    first = get(module_server, key)
    assert first.headers["ETag"] == f'"v1-{hash_bytes(b"<p>hi</p>")}"' and first.headers["Content-Type"] == "text/plain"
    assert get(module_server, key, **{"If-None-Match": first.headers["ETag"]}).status == 304  # revalidation holds
    retyped = put(module_server, key, b"<p>hi</p>", **{"Content-Type": "text/html"})
    assert retyped.status == 201 and retyped.json()["version"] == 2
    assert retyped.headers["ETag"] == f'"v2-{hash_bytes(b"<p>hi</p>")}"'  # the write says the key's new tag
    # A client revalidating with the old tag is told the representation changed, and gets the new type.
    fresh = get(module_server, key, **{"If-None-Match": first.headers["ETag"]})
    assert fresh.status == 200 and fresh.headers["Content-Type"] == "text/html"
    assert fresh.headers["ETag"] not in (first.headers["ETag"], "") and fresh.body == b"<p>hi</p>"
    assert get(module_server, key, **{"If-None-Match": fresh.headers["ETag"]}).status == 304


@pytest.mark.parametrize("size", [5, BIG], ids=["small", "streamed"])
def test_if_match_takes_the_etag_a_read_gave(module_server, size):
    key = f"h1/etag-{size}"
    assert put(module_server, key, os.urandom(size)).status == 201
    tag = get(module_server, key).headers["ETag"]
    written = put(module_server, key, b"second", **{"If-Match": tag})
    assert written.status == 201 and written.json()["version"] == 2, written.body
    stale = put(module_server, key, b"third", **{"If-Match": tag})  # the tag of version 1: the key has moved on
    assert stale.status == 412 and stale.json()["exit_code"] == 4
    listed = put(module_server, key, b"third", **{"If-Match": f'"v9-{"0" * 64}", {written.headers["ETag"]}'})
    assert listed.status == 201 and listed.json()["version"] == 3  # any tag of a list may match
    weak = put(module_server, key, b"fourth", **{"If-Match": "W/" + listed.headers["ETag"]})
    assert weak.status == 412  # If-Match compares strongly: a weak tag never matches
    assert history(module_server, key) == [(1, "put"), (2, "put"), (3, "put")]


def test_a_tag_naming_the_latest_version_but_another_object_is_refused(module_server):
    key = "h1/other-store"
    assert put(module_server, key, b"here").status == 201
    foreign = f'"v1-{hash_bytes(b"somewhere else")}"'  # version 1 of the same key in another store
    assert put(module_server, key, b"x", **{"If-Match": foreign}).status == 412
    assert history(module_server, key) == [(1, "put")]


def test_if_match_star_needs_a_live_version(module_server):
    key = "h1/star"
    assert put(module_server, key, b"a", **{"If-Match": "*"}).status == 412  # no key yet
    assert put(module_server, key, b"a").status == 201
    assert put(module_server, key, b"b", **{"If-Match": "*"}).status == 201
    deleted = module_server.request("DELETE", key_url(key), headers={"If-Match": "*"})
    assert deleted.status == 200 and deleted.json()["version"] == 3
    assert put(module_server, key, b"c", **{"If-Match": "*"}).status == 412  # deleted: nothing current to match
    assert module_server.request("DELETE", key_url(key), headers={"If-Match": "*"}).status == 412
    assert history(module_server, key) == [(1, "put"), (2, "put"), (3, "delete")]


def test_delete_takes_the_etag_a_read_gave(module_server):
    key = "h1/delete"
    assert put(module_server, key, b"one").status == 201
    old = get(module_server, key).headers["ETag"]
    assert put(module_server, key, b"two").status == 201
    assert module_server.request("DELETE", key_url(key), headers={"If-Match": old}).status == 412
    current = get(module_server, key).headers["ETag"]
    assert module_server.request("DELETE", key_url(key), headers={"If-Match": current}).status == 200


def test_malformed_if_match_is_400(module_server):
    for bad in ('"v1-abc"', "v1-" + "a" * 64, '"x"', '"v1-' + "A" * 64 + '"'):
        assert put(module_server, "h1/bad", b"x", **{"If-Match": bad}).status == 400, bad


def test_racing_writers_with_one_etag_make_exactly_one_version(module_server):
    """No read-then-write race: of writers that all read one tag, the commit lets one through."""
    key = "h1/race"
    assert put(module_server, key, b"base").status == 201
    tag = get(module_server, key).headers["ETag"]
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda n: put(module_server, key, f"writer {n}".encode(), **{"If-Match": tag}).status, range(16)))
    assert sorted(statuses) == [201] + [412] * 15, statuses
    assert [version for version, _op in history(module_server, key)] == [1, 2]
