"""S4: an Idempotency-Key names one request (its fingerprint and body), imports included, and a retry
after the first attempt's worker was killed is answered honestly (never as another request)."""

from __future__ import annotations

import json
import os
import sqlite3
import uuid

import pytest

from imstore.hashing import hash_bytes

from .conftest import key_url

pytestmark = pytest.mark.timeout(180)

DIED = (502, 503)  # a worker killed mid-request: the gateway says so (a write with a key is not retried into the dead one)


def jsonl(*items: tuple[str, str]) -> bytes:
    return b"".join(json.dumps({"key": key, "content": content}).encode() + b"\n" for key, content in items)


def import_body(server, body: bytes, request_id: str, prefix: str = ""):
    query = f"?prefix={prefix}" if prefix else ""
    headers = {"Content-Type": "application/x-ndjson", "Idempotency-Key": request_id}
    return server.request("POST", "/v1/import" + query, body=body, headers=headers)


def history(server, key: str) -> list[int]:
    reply = server.request("GET", "/v1/history/" + key_url(key)[len("/v1/keys/"):], token="read")
    return [entry["version"] for entry in reply.json()] if reply.status == 200 else []


def test_an_import_retried_with_another_body_is_422_and_imports_nothing(module_server):
    request_id = uuid.uuid4().hex
    first = import_body(module_server, jsonl(("fp/a", "one")), request_id)
    assert first.status == 201, first.body
    assert import_body(module_server, jsonl(("fp/a", "one")), request_id).json() == first.json()  # the same: replayed
    reused = import_body(module_server, jsonl(("fp/a", "two"), ("fp/b", "new")), request_id)
    assert reused.status == 422 and reused.json()["error"] == "IdempotencyKeyReused", reused.body
    assert history(module_server, "fp/a") == [1] and history(module_server, "fp/b") == []


def test_an_import_retried_with_another_prefix_is_422(module_server):
    request_id = uuid.uuid4().hex
    body = jsonl(("k", "v"))
    assert import_body(module_server, body, request_id, prefix="fp-one/").status == 201
    assert import_body(module_server, body, request_id, prefix="fp-two/").status == 422
    assert history(module_server, "fp-two/k") == []


def test_a_delete_retried_with_another_message_is_422(module_server):
    assert module_server.request("PUT", key_url("fp/del"), body=b"x").status == 201
    request_id = uuid.uuid4().hex
    first = module_server.request("DELETE", key_url("fp/del"), headers={"Idempotency-Key": request_id, "X-Imstore-Message": "why"})
    assert first.status == 200
    again = module_server.request("DELETE", key_url("fp/del"), headers={"Idempotency-Key": request_id, "X-Imstore-Message": "why"})
    assert again.status == 200 and again.json() == first.json()
    other = module_server.request("DELETE", key_url("fp/del"), headers={"Idempotency-Key": request_id, "X-Imstore-Message": "else"})
    assert other.status == 422


def ledger_rows(store) -> list[tuple]:
    with sqlite3.connect(f"file:{store / 'idempotency.sqlite'}?mode=ro", uri=True) as db:
        return db.execute("SELECT id, status, body FROM requests").fetchall()


def wait_replaced(server, pids: list[int], timeout: float = 30) -> None:
    """Until the workers with these pids are dead and replaced, and the server is ok (polled, bounded)."""
    import time

    deadline = time.monotonic() + timeout
    while not (server.health()["status"] == "ok" and not set(pids) & set(server.worker_pids())):
        assert time.monotonic() < deadline, "the killed worker was not replaced"
        time.sleep(0.02)


def rows_so_far(store) -> list[tuple]:
    """The ledger's rows, none while a worker is still creating it."""
    try:
        return ledger_rows(store)
    except sqlite3.OperationalError:  # no file yet, or its table not yet made
        return []


def test_a_worker_killed_before_its_commit_leaves_the_body_recorded_and_a_changed_retry_is_422(start, store_path):
    """The first attempt's worker dies (SIGKILL at a crash point) after the body arrived and before the
    commit: no answer was stored, yet the retry with another body is told it is another request."""
    server = start("--workers", "1", env={"IMSTORE_CRASH_AT": "object-fsynced"})
    request_id = uuid.uuid4().hex
    body = os.urandom(3000)
    pids = server.worker_pids()
    first = server.request("PUT", key_url("fp/killed"), body=body, headers={"Idempotency-Key": request_id})
    assert first.status in DIED, first.body
    assert ledger_rows(store_path) == [(request_id, None, hash_bytes(body))]  # recorded before the commit
    wait_replaced(server, pids)
    changed = server.request("PUT", key_url("fp/killed"), body=b"another body", headers={"Idempotency-Key": request_id})
    assert changed.status == 422, changed.body
    assert server.request("GET", key_url("fp/killed"), token="read").status == 404  # nothing committed


def test_an_import_whose_worker_died_after_its_commit_is_answered_with_a_warning(start):
    """The worker dies right after the import's frame is durable: the retry of the same body adds
    nothing and says an earlier attempt may have committed; a retry with another body is 422."""
    server = start("--workers", "1", env={"IMSTORE_CRASH_AT": "log-fsynced"})
    request_id = uuid.uuid4().hex
    body = jsonl(("fp/i1", "first"), ("fp/i2", "second"))
    pids = server.worker_pids()
    retried = import_body(server, body, request_id)  # the gateway retries a buffered body with a key itself
    if retried.status in DIED:  # ... unless the restarted worker was not ready yet: then the client does
        wait_replaced(server, pids)
        retried = import_body(server, body, request_id)
    assert retried.status == 200, retried.body
    assert "exited with -9" in server.log()  # the first attempt's worker was killed after its commit
    answer = retried.json()
    assert (answer["added"], answer["unchanged"]) == (0, 2)
    assert any("earlier attempt" in warning and "may have committed" in warning for warning in answer["warnings"]), answer
    assert import_body(server, body, request_id).json() == answer  # from now on: replayed
    assert import_body(server, jsonl(("fp/i1", "changed")), request_id).status == 422
    assert history(server, "fp/i1") == [1] and history(server, "fp/i2") == [1]


def test_a_ledger_from_before_fingerprints_gets_the_columns_and_keeps_its_rows(tmp_path):
    from imstore import Store
    from imstore.errors import IdempotencyKeyReused
    from imstore.server.idempotency import IdempotencyLedger

    root = tmp_path / "store"
    with Store.init(root)[0] as store:
        store_id = store.store_id
    with sqlite3.connect(root / "idempotency.sqlite") as db:  # the schema before S4's fingerprints
        db.execute("CREATE TABLE requests (id TEXT PRIMARY KEY, method TEXT, key TEXT, owner TEXT,"
                   " seq_before INTEGER, status INTEGER, answer TEXT, created REAL)")  # fmt: skip
        db.execute("INSERT INTO requests VALUES ('old', 'PUT', 'k', NULL, 0, 201, '{\"version\": 1}', 0)")
    ledger = IdempotencyLedger(root, str(tmp_path / "owner.lock"), store_id)
    assert ledger.claim("old", "PUT", "k", 0, "any-fingerprint").answer == (201, {"version": 1})  # none stored: key only
    assert ledger.claim("new", "PUT", "k", 0, "fingerprint-a").state == "new"
    ledger.record_body("new", "body-hash")
    ledger.release("new")
    orphan = ledger.claim("new", "PUT", "k", 0, "fingerprint-a")
    assert (orphan.state, orphan.body) == ("orphan", "body-hash")
    ledger.release("new")
    with pytest.raises(IdempotencyKeyReused):
        ledger.claim("new", "PUT", "k", 0, "fingerprint-b")


def test_a_worker_killed_mid_body_committed_nothing_so_the_retry_runs(start, store_path):
    """kill -9 of the worker while the body streams in: no body hash was recorded, so nothing can have
    committed, and the retry (here with the whole body, as a client resending would) simply runs."""
    import signal
    import socket
    import time

    server = start("--workers", "1")
    request_id = uuid.uuid4().hex
    size = 4 << 20
    head = (f"PUT {key_url('fp/mid-body')} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {server.write_token}\r\n"
            f"Idempotency-Key: {request_id}\r\nContent-Length: {size}\r\n\r\n").encode()  # fmt: skip
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(head + b"a" * (1 << 20))
        deadline = time.monotonic() + 30
        while not rows_so_far(store_path):  # polled: the claim
            assert time.monotonic() < deadline, "the request never claimed its key"
            time.sleep(0.02)
        assert ledger_rows(store_path) == [(request_id, None, None)]  # claimed; the body has not arrived whole
        victim = server.worker_pids()
        os.kill(victim[0], signal.SIGKILL)
    wait_replaced(server, victim)
    body = os.urandom(size)
    retried = server.request("PUT", key_url("fp/mid-body"), body=body, headers={"Idempotency-Key": request_id})
    assert retried.status == 201 and retried.json()["version"] == 1, retried.body
    assert server.request("GET", key_url("fp/mid-body"), token="read").body == body
    assert ledger_rows(store_path) == [(request_id, 201, hash_bytes(body))]
