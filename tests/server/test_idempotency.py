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
