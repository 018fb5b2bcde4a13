"""HTTP semantics: ETag, 304, Range 206/416, preconditions 412, problem+json, HEAD, keys in paths, limits."""

from __future__ import annotations

import json
import socket

import pytest

from imstore.hashing import hash_bytes

from .conftest import key_url

pytestmark = pytest.mark.timeout(120)

IMMUTABLE = "private, max-age=31536000, immutable"


def put(server, key: str, body: bytes, **headers):
    return server.request("PUT", key_url(key), body=body, headers=headers)


def test_put_then_get_carries_etag_version_and_no_cache(shared_server):
    first = put(shared_server, "sem/a", b"one")
    assert first.status == 201
    assert first.json()["version"] == 1 and first.json()["unchanged"] is False
    second = put(shared_server, "sem/a", b"two")
    assert second.status == 201 and second.json()["version"] == 2
    again = put(shared_server, "sem/a", b"two")
    assert again.status == 200 and again.json()["unchanged"] is True and again.json()["version"] == 2
    reply = shared_server.request("GET", key_url("sem/a"), token="read")
    assert reply.status == 200 and reply.body == b"two"
    raw = str(reply.headers)
    assert f'ETag: "v2-{hash_bytes(b"two")}"' in raw, raw  # canonical spelling on the wire; names the version (H1)
    assert "X-Imstore-Version: 2" in raw
    assert reply.headers["Cache-Control"] == "private, no-cache"
    old = shared_server.request("GET", key_url("sem/a") + "?version=1", token="read")
    assert old.body == b"one" and old.headers["Cache-Control"] == IMMUTABLE and old.headers["X-Imstore-Version"] == "1"


def test_header_names_reach_clients_in_their_canonical_spelling(shared_server):
    written = put(shared_server, "sem/spelling", b"spelled out")
    object_id = written.json()["hash"]
    ranged = shared_server.request("GET", key_url("sem/spelling"), headers={"Range": "bytes=0-4"}, token="read")
    relayed = shared_server.request("GET", f"/v1/objects/{object_id}", token="read")
    from_memory = shared_server.request("GET", f"/v1/objects/{object_id}", token="read")  # the gateway's copy of the headers
    refused = shared_server.request("GET", "/v1/log", token=None)
    names = {label: list(reply.headers.keys()) for label, reply in
             [("written", written), ("ranged", ranged), ("relayed", relayed), ("from_memory", from_memory), ("refused", refused)]}
    assert {"ETag", "X-Imstore-Version"} <= set(names["written"]), names
    assert {"ETag", "X-Imstore-Version", "Content-Range"} <= set(names["ranged"]), names
    assert "ETag" in names["relayed"] and "ETag" in names["from_memory"], names
    assert "WWW-Authenticate" in names["refused"], names


def test_if_none_match_gives_304_on_keys_and_objects(shared_server):
    put(shared_server, "sem/etag", b"cached bytes")
    etag = f'"v1-{hash_bytes(b"cached bytes")}"'
    reply = shared_server.request("GET", key_url("sem/etag"), headers={"If-None-Match": etag}, token="read")
    assert reply.status == 304 and reply.body == b"" and reply.headers["ETag"] == etag
    object_tag = f'"{hash_bytes(b"cached bytes")}"'
    obj = shared_server.request("GET", f"/v1/objects/{object_tag.strip(chr(34))}", headers={"If-None-Match": object_tag}, token="read")
    assert obj.status == 304
    other = shared_server.request("GET", key_url("sem/etag"), headers={"If-None-Match": '"abc"'}, token="read")
    assert other.status == 200 and other.body == b"cached bytes"


def test_objects_are_immutable_and_support_ranges(shared_server):
    data = bytes(range(256)) * 4
    object_id = put(shared_server, "sem/range", data).json()["hash"]
    path = f"/v1/objects/{object_id}"
    whole = shared_server.request("GET", path, token="read")
    assert whole.body == data and whole.headers["Cache-Control"] == IMMUTABLE and whole.headers["ETag"] == f'"{object_id}"'
    part = shared_server.request("GET", path, headers={"Range": "bytes=10-19"}, token="read")
    assert part.status == 206 and part.body == data[10:20] and part.headers["Content-Range"] == f"bytes 10-19/{len(data)}"
    tail = shared_server.request("GET", path, headers={"Range": "bytes=-5"}, token="read")
    assert tail.status == 206 and tail.body == data[-5:]
    open_end = shared_server.request("GET", key_url("sem/range"), headers={"Range": "bytes=1000-"}, token="read")
    assert open_end.status == 206 and open_end.body == data[1000:]
    beyond = shared_server.request("GET", path, headers={"Range": f"bytes={len(data)}-"}, token="read")
    assert beyond.status == 416 and beyond.headers["Content-Range"] == f"bytes */{len(data)}"
    prefix = shared_server.request("GET", f"/v1/objects/{object_id[:12]}", token="read")
    assert prefix.body == data and prefix.headers["Cache-Control"] == "private, no-cache"


def test_head_has_the_headers_of_get_and_no_body(shared_server):
    put(shared_server, "sem/head", b"12345")
    reply = shared_server.request("HEAD", key_url("sem/head"), token="read")
    assert reply.status == 200 and reply.body == b""
    assert reply.headers["Content-Length"] == "5" and reply.headers["X-Imstore-Version"] == "1"
    missing = shared_server.request("HEAD", key_url("sem/nothing-here"), token="read")
    assert missing.status == 404


def test_preconditions_fail_with_412_and_write_nothing(shared_server):
    assert put(shared_server, "sem/cas", b"v1", **{"If-None-Match": "*"}).status == 201
    refused = put(shared_server, "sem/cas", b"v2", **{"If-None-Match": "*"})
    assert refused.status == 412 and refused.headers["Content-Type"] == "application/problem+json"
    assert refused.json()["status"] == 412 and refused.json()["exit_code"] == 4
    assert put(shared_server, "sem/cas", b"v2", **{"If-Match": '"v2"'}).status == 412
    assert put(shared_server, "sem/cas", b"v2", **{"If-Match": '"v1"'}).status == 201
    assert put(shared_server, "sem/cas", b"v3", **{"If-Match": "v2"}).status == 400
    history = shared_server.request("GET", "/v1/history/" + "sem%2Fcas", token="read").json()
    assert [entry["version"] for entry in history] == [1, 2]


def test_deleted_key_is_404_but_history_and_old_versions_stay(shared_server):
    put(shared_server, "sem/del", b"bytes")
    deleted = shared_server.request("DELETE", key_url("sem/del"))
    assert deleted.status == 200 and deleted.json()["op"] == "delete" and deleted.json()["version"] == 2
    gone = shared_server.request("GET", key_url("sem/del"), token="read")
    assert gone.status == 404 and gone.json()["error"] == "KeyDeleted"
    assert shared_server.request("GET", key_url("sem/del") + "?version=1", token="read").body == b"bytes"
    assert shared_server.request("DELETE", key_url("sem/del")).status == 404
    listed = shared_server.request("GET", "/v1/keys?prefix=sem%2Fdel&all=1", token="read").json()
    assert [(entry["key"], entry["op"]) for entry in listed] == [("sem/del", "delete")]


def test_keys_are_decoded_once_and_never_normalised(shared_server):
    assert shared_server.request("PUT", "/v1/keys/%2e%2e%2f", body=b"dots").status == 201
    assert shared_server.request("PUT", "/v1/keys/%252e%252e%252f", body=b"double").status == 201
    assert shared_server.request("PUT", "/v1/keys/a//b/../c", body=b"raw").status == 201
    keys = {entry["key"] for entry in shared_server.request("GET", "/v1/keys", token="read").json()}
    assert {"../", "%2e%2e%2f", "a//b/../c"} <= keys
    assert shared_server.request("GET", "/v1/keys/%2e%2e%2f", token="read").body == b"dots"
    assert not (shared_server.store.parent / "x").exists()


@pytest.mark.parametrize(
    "path, status",
    [
        ("/v1/keys/%ff%fe", 400),  # not UTF-8
        ("/v1/keys/", 400),  # empty key
        ("/v1/keys/%20%20", 400),  # whitespace only
        ("/v1/keys/a%00b", 400),  # control character
        ("/v1/keys/" + "k" * 1025, 400),  # longer than 1024 bytes
        ("/v1/keys/" + "k" * 9000, 414),  # longer than the request line limit
        ("/v1/keys/a?version=x", 400),
        ("/v1/keys/a?version=0", 400),
        ("/v1/keys/a?at=yesterday", 400),
        ("/v1/objects/xyz", 400),
        ("/v1/nothing", 404),
        # S5: numbers and times out of the store's range are the client's error, never a 500 OverflowError
        ("/v1/keys/a?version=99999999999999999999", 400),
        ("/v1/keys/a?version=" + "9" * 5000, 400),
        ("/v1/keys/a?at=9999-12-31T23:59:59Z", 400),
        ("/v1/keys/a?at=0001-01-01", 400),
        ("/v1/log?after=99999999999999999999", 400),
        ("/v1/log?limit=99999999999999999999", 400),
        ("/v1/log?limit=" + "9" * 5000, 400),
        ("/v1/log?limit=%C2%B2", 400),  # a superscript two: str.isdigit() says yes, int() says no
        ("/v1/keys?limit=99999999999999999999", 400),
        ("/v1/history/a?limit=99999999999999999999", 400),
    ],
)
def test_bad_paths_are_clear_errors(shared_server, path, status):
    reply = shared_server.request("GET", path, token="read")
    assert reply.status == status, reply.body
    assert reply.headers["Content-Type"] == "application/problem+json"
    assert json.loads(reply.body)["status"] == status


@pytest.mark.parametrize("if_match", ['"v99999999999999999999"', '"v' + "9" * 5000 + '"', '"v\u00b2"'])
def test_an_out_of_range_if_match_is_a_clear_error(shared_server, if_match):
    reply = put(shared_server, "sem/if-match-range", b"x", **{"If-Match": if_match.encode("latin-1").decode("latin-1")})
    assert reply.status == 400 and reply.json()["error"] == "InvalidVersion", reply.body


@pytest.mark.parametrize("method, path", [("POST", "/v1/keys/a"), ("PATCH", "/v1/keys/a"), ("DELETE", "/v1/log"), ("PUT", "/healthz"),
                                          ("POST", "/v1/objects/" + "0" * 64)])
def test_wrong_methods_are_405_with_allow(shared_server, method, path):
    reply = shared_server.request(method, path, body=b"x", token="write")
    assert reply.status == 405 and reply.headers["Allow"]


def test_huge_headers_are_431(shared_server):
    big = shared_server.request("GET", "/v1/log", headers={"X-Big": "a" * 10000}, token="read")
    assert big.status == 431 and big.headers["Content-Type"] == "application/problem+json"
    many = {f"X-H{n}": "v" for n in range(150)}
    assert shared_server.request("GET", "/v1/log", headers=many, token="read").status == 431
    assert shared_server.health()["status"] == "ok"


def test_body_over_max_body_is_413_and_writes_nothing(shared_server):
    reply = put(shared_server, "sem/huge", b"x" * (1024 * 1024 + 1))
    assert reply.status == 413
    chunked = raw_exchange(
        shared_server,
        b"PUT /v1/keys/sem%2Fhuge2 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + shared_server.write_token.encode()
        + b"\r\nTransfer-Encoding: chunked\r\n\r\n" + (b"100000\r\n" + b"y" * 0x100000 + b"\r\n") * 2 + b"0\r\n\r\n",
    )
    assert chunked.startswith(b"HTTP/1.1 413"), chunked[:100]
    assert shared_server.request("GET", key_url("sem/huge"), token="read").status == 404
    assert shared_server.request("GET", key_url("sem/huge2"), token="read").status == 404


def test_healthz_and_metrics_report_workers_routes_and_restarts(shared_server):
    health = shared_server.health()
    assert health["status"] == "ok"
    assert [w["id"] for w in health["workers"]] == [1, 2] and all(w["alive"] and w["pid"] for w in health["workers"])
    for _ in range(4):
        shared_server.request("GET", "/v1/log", token="read")
    counts = [w["requests"] for w in shared_server.health()["workers"]]
    assert all(count >= 2 for count in counts), counts  # round robin reached both
    text = shared_server.request("GET", "/metrics", token="read").body.decode()
    assert 'imstore_http_requests_total{route="log",method="GET",status="200"}' in text
    assert "imstore_http_request_duration_seconds_bucket" in text and "imstore_worker_restarts_total 0" in text
    assert 'imstore_http_response_bytes_total{route="log"}' in text


def raw_exchange(server, data: bytes, timeout: float = 10) -> bytes:
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as sock:
        sock.sendall(data)
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
                if b"\r\n\r\n" in received and len(received) > 12:
                    break
        except (ConnectionResetError, TimeoutError):
            pass
        return received


@pytest.mark.timeout(120)
def self_signed_certificate(tmp_path, *extra: str):
    """(cert.pem, key.pem) for CN=127.0.0.1 made by openssl (the test skips without it); extra: more openssl req options."""
    import shutil
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1", *extra,
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


def test_tls_serves_https_with_the_given_certificate(start, tmp_path):
    import ssl
    import urllib.request

    cert, key = self_signed_certificate(tmp_path)
    server = start("--workers", "1", "--tls-cert", str(cert), "--tls-key", str(key), tls=True)
    context = ssl.create_default_context(cafile=str(cert))
    context.check_hostname = False
    request = urllib.request.Request(f"https://127.0.0.1:{server.port}/v1/log", headers={"Authorization": f"Bearer {server.read_token}"})
    with urllib.request.urlopen(request, context=context, timeout=30) as reply:
        assert reply.status == 200 and reply.read() == b"[]"
    assert "listening on https://" in server.log()


def _damage(store_root, object_hash: str, position: int) -> None:
    import os

    path = store_root / "objects" / object_hash[:2] / object_hash[2:]
    os.chmod(path, 0o644)
    with open(path, "r+b") as handle:
        handle.seek(position)
        byte = handle.read(1)
        handle.seek(position)
        handle.write(bytes([byte[0] ^ 0xFF]))


@pytest.mark.parametrize(
    ("size", "read_first"), [(5000, False), (5000, True), (9 << 20, True)], ids=["small", "small-cached", "large"]
)
def test_a_damaged_object_is_an_error_never_wrong_bytes(shared_server, size, read_first):
    import os

    from imstore import Store
    from imstore.cache import DEFAULT_MAX_OBJECT_SIZE

    data = os.urandom(size)
    with Store.open(shared_server.store) as store:  # no cache: only a read through the server caches it
        object_hash = store.put(f"damaged/{size}/{read_first}", data).version.hash
    if read_first:
        good = shared_server.request("GET", f"/v1/objects/{object_hash}", headers={"Range": f"bytes={size - 100}-"}, token="read")
        assert good.status == 206 and good.body == data[-100:]
    _damage(shared_server.store, object_hash, size // 2)
    for path in (f"/v1/objects/{object_hash}", key_url(f"damaged/{size}/{read_first}")):
        reply = shared_server.request("GET", path, token="read")  # checked before the first byte leaves
        if read_first and size <= DEFAULT_MAX_OBJECT_SIZE:  # the workers' read cache kept a verified copy
            assert reply.status == 200 and reply.body == data, reply.status
        else:
            assert reply.status == 500 and reply.json()["error"] == "CorruptObject", reply.status


def test_max_body_takes_the_same_sizes_as_every_other_size_option(start):
    server = start("--workers", "1", "--max-body", "1.5M")
    limit = 3 << 19
    assert put(server, "sem/at-limit", b"x" * limit).status == 201
    assert put(server, "sem/over-limit", b"x" * (limit + 1)).status == 413


def test_a_bad_max_body_is_a_usage_error_naming_the_size(store_path):
    import subprocess

    from .conftest import IMSTORE

    for bad in ("1.5Q", "-1", "10 gigs"):
        command = [*IMSTORE, "--store", str(store_path), "serve", "--max-body", bad]
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and "not a size" in done.stderr and bad in done.stderr, (bad, done.returncode, done.stderr)


def test_cacert_lets_the_remote_cli_trust_a_self_signed_server(start, tmp_path):
    """HARDENING: --remote https:// with a self-signed certificate had no documented way to trust it."""

    from tests.conftest import run_cli_in_process

    cert, key = self_signed_certificate(tmp_path, "-addext", "subjectAltName=IP:127.0.0.1")
    server = start("--workers", "1", "--tls-cert", str(cert), "--tls-key", str(key), tls=True)
    token = tmp_path / "token"
    token.write_text(server.read_token)
    token.chmod(0o600)
    remote = ["--remote", f"https://127.0.0.1:{server.port}", "--token-file", str(token)]
    untrusted = run_cli_in_process([*remote, "ls"])
    assert untrusted.code == 6 and "certificate" in untrusted.stderr.lower(), untrusted.stderr
    trusted = run_cli_in_process([*remote, "--cacert", str(cert), "ls"])
    assert trusted.code == 0, trusted.stderr
    from_env = run_cli_in_process([*remote, "ls"], env={"IMSTORE_CACERT": str(cert)})
    assert from_env.code == 0, from_env.stderr
    missing = run_cli_in_process([*remote, "--cacert", str(tmp_path / "nope.pem"), "ls"])
    assert missing.code == 2 and "--cacert" in missing.stderr
