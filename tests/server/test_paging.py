"""GET /v1/keys and GET /v1/log come in pages (S2): a default and a largest `limit`, a cursor (`after`),
`Link: <...>; rel="next"` while more follow, streamed with flat memory; the remote CLI follows the pages."""

from __future__ import annotations

import json
import re
from urllib.parse import parse_qs, urlsplit

import pytest
from conftest import run_cli_in_process

from imstore import Store
from imstore.server.protocol import PAGE_DEFAULT, PAGE_MAX

pytestmark = pytest.mark.timeout(300)

ODD_KEYS = ["page/a b", "page/ü", "page/x&y=z", "page/%2F", "page/#frag", "page/+plus", "page/q?", "page/tab\u00a0nbsp"]


def next_target(reply) -> str | None:
    link = reply.headers.get("Link")
    if link is None:
        return None
    found = re.fullmatch(r'<([^>]*)>; rel="next"', link)
    assert found, link
    return found.group(1)


def walk(server, target: str, pages: int = 10_000) -> tuple[list[dict], list[int]]:
    """Every entry of a listing, following its next links (bounded in pages); and each page's size."""
    entries, sizes = [], []
    for _ in range(pages):
        reply = server.request("GET", target, token="read")
        assert reply.status == 200, reply.body
        page = reply.json()
        entries += page
        sizes.append(len(page))
        target = next_target(reply)
        if target is None:
            return entries, sizes
    raise AssertionError(f"more than {pages} pages")


def fill(store_path, keys) -> None:
    with Store.open(store_path) as store:
        keys = list(keys)
        for start in range(0, len(keys), 1000):
            answers = store.put_many([(key, key.encode(), {}) for key in keys[start : start + 1000]])
            assert not [answer for answer in answers if isinstance(answer, Exception)]


def test_keys_come_in_pages_linked_to_the_next_with_every_key_once_in_order(start, store_path):
    keys = sorted([f"page/{number:03}" for number in range(23)] + ODD_KEYS)
    fill(store_path, keys + ["other/k"])
    server = start("--workers", "2")
    entries, sizes = walk(server, "/v1/keys?prefix=page%2F&limit=5")
    assert [entry["key"] for entry in entries] == keys
    assert sizes == [5] * (len(keys) // 5) + ([len(keys) % 5] if len(keys) % 5 else [])
    first = server.request("GET", "/v1/keys?prefix=page%2F&limit=5", token="read")
    query = parse_qs(urlsplit(next_target(first)).query)
    assert query["prefix"] == ["page/"] and query["limit"] == ["5"] and query["after"] == [keys[4]]
    # The cursor on its own: keys after it.
    after = server.request("GET", "/v1/keys?prefix=page%2F&after=page%2F020", token="read").json()
    assert [entry["key"] for entry in after] == [key for key in keys if key > "page/020"]


def test_the_log_comes_in_pages_after_a_seq(start, store_path):
    fill(store_path, [f"log/{number}" for number in range(30)])
    server = start("--workers", "2")
    entries, sizes = walk(server, "/v1/log?limit=7")
    assert [entry["seq"] for entry in entries] == list(range(1, 31))
    assert sizes == [7, 7, 7, 7, 2]
    reply = server.request("GET", "/v1/log?after=10&limit=7", token="read")
    assert [entry["seq"] for entry in reply.json()] == list(range(11, 18))
    assert parse_qs(urlsplit(next_target(reply)).query) == {"after": ["17"], "limit": ["7"]}
    last = server.request("GET", "/v1/log?after=28", token="read")
    assert [entry["seq"] for entry in last.json()] == [29, 30] and "Link" not in last.headers


def test_a_page_has_a_default_and_a_largest_size_and_streams_in_slices(start, store_path):
    count = PAGE_MAX + 700
    fill(store_path, [f"big/{number:06}" for number in range(count)])
    server = start("--workers", "2")
    plain = server.request("GET", "/v1/keys", token="read")
    assert len(plain.json()) == PAGE_DEFAULT and next_target(plain) is not None
    largest = server.request("GET", "/v1/log?limit=99999999", token="read")
    assert [entry["seq"] for entry in largest.json()] == list(range(1, PAGE_MAX + 1))  # in order across slices
    assert parse_qs(urlsplit(next_target(largest)).query)["after"] == [str(PAGE_MAX)]
    entries, sizes = walk(server, "/v1/keys?limit=1234")
    assert [entry["key"] for entry in entries] == [f"big/{number:06}" for number in range(count)]
    assert sizes[:-1] == [1234] * (len(sizes) - 1)
    # The remote CLI follows the pages: everything, as a local ls and log give it.
    token = store_path.parent / "token"
    token.write_text(server.read_token)
    token.chmod(0o600)  # a token file others can read is warned about
    remote = ["--remote", server.url, "--token-file", str(token)]
    listed = run_cli_in_process([*remote, "ls", "--json"])
    assert listed.code == 0, listed.stderr
    assert [entry["key"] for entry in json.loads(listed.stdout)] == [f"big/{number:06}" for number in range(count)]
    logged = run_cli_in_process([*remote, "log", "--json"])
    assert len(json.loads(logged.stdout)) == count
    local = run_cli_in_process(["--store", str(store_path), "ls", "--json"])
    assert json.loads(listed.stdout) == json.loads(local.stdout)
    some = run_cli_in_process([*remote, "ls", "--json", "--limit", str(PAGE_MAX + 5)])  # more than one page holds
    assert [entry["key"] for entry in json.loads(some.stdout)] == [f"big/{number:06}" for number in range(PAGE_MAX + 5)]


def test_a_page_is_revalidated_by_its_etag(start, store_path):
    fill(store_path, [f"tag/{number}" for number in range(12)])
    server = start("--workers", "1")
    first = server.request("GET", "/v1/keys?limit=5", token="read")
    again = server.request("GET", "/v1/keys?limit=5", token="read", headers={"If-None-Match": first.headers["ETag"]})
    assert again.status == 304 and again.body == b""
    following = server.request("GET", next_target(first), token="read")
    assert following.headers["ETag"] != first.headers["ETag"]  # another page is another listing


def test_paging_takes_bad_numbers_as_before(start, store_path):
    server = start("--workers", "1")
    for target in ("/v1/log?limit=0", "/v1/log?limit=x", "/v1/keys?limit=-1", "/v1/log?after=-1"):
        assert server.request("GET", target, token="read").status == 400, target


@pytest.mark.slow
def test_a_long_listing_keeps_worker_memory_flat(start, store_path):
    """200,000 records were a 55 MB answer and about 0.5 GB in the worker: now the worker reads a page in
    slices, whatever its size, and only the client holds what it asked for."""
    import psutil

    count = 120_000
    fill(store_path, [f"mem/{number:07}" for number in range(count)])
    server = start("--workers", "1")
    worker = psutil.Process(server.worker_pids()[0])
    server.request("GET", "/v1/log?limit=10", token="read")  # the index opened and warm
    before = worker.memory_info().rss
    entries, _sizes = walk(server, f"/v1/log?limit={PAGE_MAX}")
    assert len(entries) == count
    old_style = server.request("GET", "/v1/log?limit=99999999", token="read")  # what asked for all before
    assert len(old_style.json()) == PAGE_MAX
    grown = worker.memory_info().rss - before
    assert grown < 40 << 20, f"the worker grew by {grown >> 20} MiB listing {count} records"


def test_store_pages_skip_deleted_keys_unless_asked_and_stop_at_their_end(store_path):
    fill(store_path, [f"del/{number}" for number in range(6)] + ["zz"])
    with Store.open(store_path) as store:
        store.delete("del/1")
        store.delete("del/4")
        assert store.ls_page_end("del/", False, None, 2) == ("del/2", True)
        assert store.ls_page_end("del/", False, "del/2", 2) == ("del/5", False)
        assert store.ls_page_end("del/", False, "del/5", 2) == (None, False)
        assert [v.key for v in store.ls_page("del/", False, "del/0", "del/3", 10)] == ["del/2", "del/3"]
        assert [v.key for v in store.ls_page("del/", True, None, None, 10)] == [f"del/{number}" for number in range(6)]
        assert store.log_page_end(0, 3) == (3, True) and store.log_page_end(6, 3) == (9, False)
        assert store.log_page_end(7, 3) == (None, False)
        assert [v.seq for v in store.log_page(2, 5, 10)] == [3, 4, 5]
        assert [v.seq for v in store.log_page(7, None, 10)] == [8, 9]
