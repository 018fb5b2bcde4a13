"""S10: answers that change are never served stale by a cache: listings and latest versions say
`private, no-cache`, and a listing's ETag (its log position) lets a client revalidate with a 304."""

from __future__ import annotations

import pytest

from .conftest import key_url

pytestmark = pytest.mark.timeout(120)

NO_CACHE = "private, no-cache"
LISTINGS = ["/v1/history/cache%2Fk", "/v1/keys?prefix=cache%2F", "/v1/log", "/v1/log?after=1&limit=5"]


@pytest.fixture(scope="module")
def cache_server(module_server):
    assert module_server.request("PUT", key_url("cache/k"), body=b"one").status == 201
    return module_server


@pytest.mark.parametrize("path", LISTINGS)
def test_a_listing_is_private_no_cache_with_an_etag(cache_server, path):
    reply = cache_server.request("GET", path, token="read")
    assert reply.status == 200 and reply.headers["Cache-Control"] == NO_CACHE
    etag = reply.headers["ETag"]
    assert etag.startswith('"') and etag.endswith('"') and len(etag) > 2
    again = cache_server.request("GET", path, token="read")
    assert again.headers["ETag"] == etag and again.body == reply.body  # nothing written: the same tag


@pytest.mark.parametrize("path", LISTINGS)
def test_a_listing_revalidates_with_304_until_the_log_moves(cache_server, path):
    etag = cache_server.request("GET", path, token="read").headers["ETag"]
    cached = cache_server.request("GET", path, headers={"If-None-Match": etag}, token="read")
    assert cached.status == 304 and cached.body == b"" and cached.headers["ETag"] == etag
    assert cached.headers["Cache-Control"] == NO_CACHE
    assert cache_server.request("PUT", key_url("cache/other"), body=path.encode()).status == 201  # the log moves on
    fresh = cache_server.request("GET", path, headers={"If-None-Match": etag}, token="read")
    assert fresh.status == 200 and fresh.headers["ETag"] != etag


def test_listings_of_different_urls_have_different_tags(cache_server):
    tags = {cache_server.request("GET", path, token="read").headers["ETag"] for path in LISTINGS}
    assert len(tags) == len(LISTINGS)


def test_a_latest_version_is_private_no_cache_and_an_old_one_immutable(cache_server):
    latest = cache_server.request("GET", key_url("cache/k"), token="read")
    assert latest.status == 200 and latest.headers["Cache-Control"] == NO_CACHE
    head = cache_server.request("HEAD", key_url("cache/k"), token="read")
    assert head.headers["Cache-Control"] == NO_CACHE
    old = cache_server.request("GET", key_url("cache/k") + "?version=1", token="read")
    assert old.headers["Cache-Control"] == "private, max-age=31536000, immutable"


def test_an_object_by_prefix_is_private_no_cache(cache_server):
    object_id = cache_server.request("GET", key_url("cache/k"), token="read").headers["ETag"].strip('"').partition("-")[2]
    assert cache_server.request("GET", f"/v1/objects/{object_id[:12]}", token="read").headers["Cache-Control"] == NO_CACHE


def test_a_shared_server_keeps_its_read_cache_out_of_the_users_folder(cache_server):
    # Module servers start before a test's own cache folder is set; they must not fill the user's.
    from imstore.cachedisk import CacheSettings, cache_folder
    from imstore.paths import user_cache_path

    assert cache_server.request("GET", key_url("cache/k"), token="read").status == 200
    assert not cache_folder(CacheSettings(directory=user_cache_path("imstore")), cache_server.store).exists()
