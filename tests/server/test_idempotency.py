"""Idempotency-Key: a retry gets the first answer back; the same key on a different request is refused (422)."""

from __future__ import annotations

import os

import pytest

from .conftest import key_url

pytestmark = pytest.mark.timeout(120)

BIG = 2 << 20  # over the worker's whole-body limit: the body streams into the put


def put(server, key: str, body: bytes, request_id: str, **headers):
    return server.request("PUT", key_url(key), body=body, headers={"Idempotency-Key": request_id, **headers})


def versions_of(server, key: str) -> list[int]:
    return [entry["version"] for entry in server.request("GET", "/v1/history/" + key_url(key)[len("/v1/keys/"):], token="read").json()]


@pytest.mark.parametrize("size", [5, BIG], ids=["small", "streamed"])
def test_a_retry_with_the_same_body_gets_the_first_answer(module_server, size):
    key, request_id, body = f"idem/same-{size}", os.urandom(8).hex(), os.urandom(size)
    first = put(module_server, key, body, request_id)
    again = put(module_server, key, body, request_id)
    assert (first.status, again.status) == (201, 201) and again.json() == first.json()
    assert versions_of(module_server, key) == [1]


@pytest.mark.parametrize("size", [5, BIG], ids=["small", "streamed"])
def test_the_same_key_with_another_body_is_422_and_writes_nothing(module_server, size):
    key, request_id = f"idem/other-{size}", os.urandom(8).hex()
    assert put(module_server, key, b"a" * size, request_id).status == 201
    reused = put(module_server, key, b"b" * size, request_id)
    assert reused.status == 422, reused.body
    assert reused.json()["error"] == "IdempotencyKeyReused" and reused.json()["exit_code"] == 2
    assert versions_of(module_server, key) == [1]
    assert module_server.request("GET", key_url(key), token="read").body == b"a" * size


@pytest.mark.parametrize(
    "changed", [{"Content-Type": "text/html"}, {"X-Imstore-Meta": "%7B%22k%22%3A%20%22v%22%7D"}], ids=["content-type", "metadata"]
)
def test_the_same_key_with_another_type_or_metadata_is_422(module_server, changed):
    key, request_id = f"idem/{next(iter(changed))}", os.urandom(8).hex()
    assert put(module_server, key, b"same", request_id, **{"Content-Type": "text/plain"}).status == 201
    reused = put(module_server, key, b"same", request_id, **{"Content-Type": "text/plain", **changed})
    assert reused.status == 422, reused.body
    assert versions_of(module_server, key) == [1]


def test_an_unchanged_put_retried_with_its_body_gets_its_answer(module_server):
    key = "idem/unchanged"
    assert module_server.request("PUT", key_url(key), body=b"kept").status == 201
    request_id = os.urandom(8).hex()
    first = put(module_server, key, b"kept", request_id)
    assert first.status == 200 and first.json()["unchanged"] is True
    assert put(module_server, key, b"kept", request_id).json() == first.json()
    assert put(module_server, key, b"other", request_id).status == 422


# ============================================================ D4: only the store's own ledger
def test_nothing_is_created_in_a_directory_that_is_not_the_store_and_a_retry_makes_one_version(start, store_path):
    """The store's directory becomes an empty mount point (a NAS unmounted): Idempotency-Key writes are
    503 and leave it empty; once the store is back, every retry of one key gets the same one version."""
    import shutil
    import uuid

    server = start("--workers", "2")
    assert server.request("PUT", key_url("mount/before"), body=b"b").status == 201  # no ledger opened yet
    request_id = uuid.uuid4().hex
    aside = store_path.parent / "store.unmounted"
    os.rename(store_path, aside)
    store_path.mkdir()  # what an unmounted mount point looks like: an empty directory
    try:
        for _ in range(8):
            reply = put(server, "mount/k", b"once", request_id)
            assert reply.status == 503, reply.body
            assert reply.headers.get("Retry-After"), reply.headers
        assert os.listdir(store_path) == []
    finally:
        shutil.rmtree(store_path)
        os.rename(aside, store_path)
    answers = [put(server, "mount/k", b"once", request_id) for _ in range(12)]
    assert {reply.status for reply in answers} == {201}, [(reply.status, reply.body) for reply in answers]
    assert len({reply.body for reply in answers}) == 1
    assert versions_of(server, "mount/k") == [1]


def test_a_ledger_only_serves_the_store_it_was_opened_for(tmp_path):
    """A ledger checks the store's config before each use: gone or another store's is Unavailable,
    and a ledger file that belongs to another store has its requests dropped before use."""
    import msgpack

    from imstore import Store
    from imstore.errors import Unavailable
    from imstore.server.idempotency import IdempotencyLedger

    root = tmp_path / "store"
    with Store.init(root)[0] as store:
        store_id = store.store_id
    owner = tmp_path / "owner.lock"
    owner.touch()
    ledger = IdempotencyLedger(root, str(owner), store_id)
    assert ledger.claim("r1", "PUT", "k", 0).state == "new"
    ledger.finish("r1", 201, {"version": 1})
    assert ledger.claim("r1", "PUT", "k", 0).state == "done"

    (root / "config").rename(tmp_path / "config.aside")  # the store is away
    with pytest.raises(Unavailable, match="holds no store"):
        ledger.claim("r2", "PUT", "k", 0)
    fresh = IdempotencyLedger(root, str(owner), store_id)
    (root / "idempotency.sqlite").rename(tmp_path / "ledger.aside")
    with pytest.raises(Unavailable, match="holds no store"):
        fresh.claim("r2", "PUT", "k", 0)
    assert not (root / "idempotency.sqlite").exists()  # not created where there is no store
    (tmp_path / "config.aside").rename(root / "config")
    (tmp_path / "ledger.aside").rename(root / "idempotency.sqlite")

    other = IdempotencyLedger(root, str(owner), "another-store-id")
    with pytest.raises(Unavailable, match="another store"):
        other.claim("r1", "PUT", "k", 0)

    # The same directory, now holding another store (its config says so), with the old ledger file in it.
    os.chmod(root / "config", 0o644)
    config = msgpack.unpackb((root / "config").read_bytes(), raw=False)
    (root / "config").write_bytes(msgpack.packb({**config, "store_id": "new-id"}, use_bin_type=True))
    successor = IdempotencyLedger(root, str(owner), "new-id")
    assert successor.claim("r1", "PUT", "k", 0).state == "new"  # the other store's answer is not replayed
    with pytest.raises(Unavailable, match="another store"):
        ledger.claim("r1", "PUT", "k", 0)


# ============================================================ D9: a full disk says so
def test_a_full_disk_in_a_claim_is_unavailable_and_says_so(tmp_path):
    """SQLite rolls a transaction back by itself on SQLITE_FULL: the answer must name the full disk,
    not the failed ROLLBACK after it ("cannot rollback - no transaction is active")."""
    from imstore import Store
    from imstore.errors import Unavailable
    from imstore.server.idempotency import IdempotencyLedger

    root = tmp_path / "store"
    with Store.init(root)[0] as store:
        store_id = store.store_id
    ledger = IdempotencyLedger(root, str(tmp_path / "owner.lock"), store_id)
    ledger.claim("warm", "PUT", "k", 0)
    pages = ledger.db.execute("PRAGMA page_count").fetchone()[0]
    ledger.db.execute(f"PRAGMA max_page_count = {pages}")  # a real SQLITE_FULL from here on
    with pytest.raises(Unavailable) as raised:
        for number in range(1000):
            ledger.claim(f"{number:0>200}", "PUT", "k", 0)
    assert "the disk is full" in str(raised.value) and "rollback" not in str(raised.value), raised.value


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs (the tests run as root); skipped where mounting is not allowed."""
    import subprocess

    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def fill(directory) -> None:
    """Write a file until the disk is full (bounded by the disk's size)."""
    fd = os.open(directory / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 16, 1 << 10, 1):
            for _ in range(1 << 16):
                try:
                    os.write(fd, b"\0" * size)
                except OSError:
                    break
    finally:
        os.close(fd)


def test_an_idempotent_put_on_a_full_disk_is_503_naming_the_full_disk(start, small_disk):
    import uuid

    from imstore import Store

    store = small_disk / "store"
    Store.init(store)[0].close()
    server = start("--workers", "1", store=store)
    assert put(server, "full/warm", b"w", uuid.uuid4().hex).status == 201
    fill(small_disk)
    try:
        for number in range(3):
            reply = put(server, f"full/k{number}", os.urandom(1000), uuid.uuid4().hex)
            assert reply.status == 503, reply.body
            detail = reply.json()["detail"]
            assert "rollback" not in detail and ("disk is full" in detail or "No space left" in detail), detail
            assert reply.headers.get("Retry-After"), reply.headers
    finally:
        (small_disk / "filler").unlink()
    assert put(server, "full/after", b"a", uuid.uuid4().hex).status == 201
    server.stop()
