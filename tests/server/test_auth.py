"""Auth: every route × no/bad/read/write token; tokens stored hashed in a 0600 file and never logged."""

from __future__ import annotations

import json
import stat
import subprocess

import pytest

from imstore.server.auth import Authenticator, TokenStore
from imstore.server.gateway import GatewayConfig, check_binding
from imstore.server.protocol import ROUTES

from .conftest import IMSTORE, free_port

pytestmark = pytest.mark.timeout(120)

SAMPLE_PATHS = {
    "key": "/v1/keys/auth-probe",
    "keys": "/v1/keys?prefix=a",
    "history": "/v1/history/auth-probe",
    "log": "/v1/log?after=0",
    "object": "/v1/objects/" + "0" * 64,
    "import": "/v1/import?prefix=auth-probe/",
    "replication": "/v1/replication",
    "replication_log": "/v1/replication/log?from=0",
    "replication_objects": "/v1/replication/objects?from=0&to=0",
    "replication_packs": "/v1/replication/packs",
    "replication_pack": "/v1/replication/packs/pack-" + "0" * 40 + ".idx",
    "healthz": "/healthz",
    "healthz_writable": "/healthz/writable",
    "healthz_readable": "/healthz/readable",
    "metrics": "/metrics",
    "openapi": "/openapi.json",
    "checkpoint": "/v1/checkpoint",
    "inclusion": "/v1/proofs/inclusion?key=auth-probe",
    "consistency": "/v1/proofs/consistency?from=0",
}
CASES = [(route.name, method) for route in ROUTES for method in route.methods]
WRITES = ("PUT", "DELETE", "POST")


def probe_body(method: str) -> bytes | None:
    return b"x" if method in ("PUT", "POST") else None
PROTECTED = [(route.name, method) for route in ROUTES for method in route.methods if not route.public]


def bad_authorizations(server) -> dict:
    token = server.write_token
    return {
        "missing": None,
        "empty": "",
        "bearer only": "Bearer",
        "bearer empty": "Bearer ",
        "wrong scheme": f"Basic {token}",
        "lowercase token": f"Bearer {token.lower()}" if token.lower() != token else f"Bearer {token.upper()}",
        "almost right": f"Bearer {token[:-1]}{'A' if token[-1] != 'A' else 'B'}",
        "with suffix": f"Bearer {token}x",
        "garbage": "Bearer \u00e9\u00e9",
    }


@pytest.mark.parametrize("route, method", PROTECTED)
def test_every_kind_of_bad_token_gets_the_same_401(shared_server, route, method):
    replies = []
    for label, value in bad_authorizations(shared_server).items():
        headers = {} if value is None else {"Authorization": value.encode("utf-8").decode("latin-1")}
        reply = shared_server.request(method, SAMPLE_PATHS[route], body=probe_body(method), headers=headers, token=None)
        replies.append((label, reply))
    for label, reply in replies:
        assert reply.status == 401, (label, reply.status, reply.body)
        assert reply.headers["WWW-Authenticate"].startswith("Bearer"), label
        assert reply.headers["Content-Type"] == "application/problem+json"
    bodies = {reply.body for _, reply in replies if method != "HEAD"}
    assert len(bodies) <= 1, "every bad token must get the same answer"


@pytest.mark.parametrize("route, method", CASES)
def test_read_token_reads_but_cannot_write(shared_server, route, method):
    reply = shared_server.request(method, SAMPLE_PATHS[route], body=probe_body(method), token="read")
    if method in WRITES:
        assert reply.status == 403, reply.body
        assert b"write" in reply.body
    elif route.startswith("replication"):  # the feed carries token hashes: standbys only (R6)
        assert reply.status == 403 and b"replicate" in reply.body, (route, reply.status)
    else:
        assert reply.status not in (401, 403), (route, method, reply.status)


@pytest.mark.parametrize("route, method", CASES)
def test_write_token_passes_auth_everywhere_but_the_feed(shared_server, route, method):
    reply = shared_server.request(method, SAMPLE_PATHS[route], body=probe_body(method), token="write")
    if route.startswith("replication"):
        assert reply.status == 403 and b"replicate" in reply.body, (route, reply.status)
    else:
        assert reply.status not in (401, 403), (route, method, reply.status, reply.body)


@pytest.mark.parametrize("route", sorted({route for route, _method in CASES if route.startswith("replication")}))
def test_a_replicate_token_reads_the_feed(shared_server, route):
    reply = shared_server.request("GET", SAMPLE_PATHS[route], token="replicate")
    assert reply.status not in (401, 403), (route, reply.status, reply.body)


def test_healthz_needs_no_token(shared_server):
    reply = shared_server.request("GET", "/healthz", token=None)
    assert reply.status == 200 and reply.json()["status"] == "ok"


def test_token_file_holds_only_hashes_with_mode_0600(shared_server):
    path = shared_server.store / "tokens"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert shared_server.write_token not in text and shared_server.read_token not in text
    assert {entry["scope"] for entry in json.loads(text)["tokens"]} >= {"read", "write"}


def test_tokens_never_appear_in_the_log(shared_server):
    shared_server.request("PUT", "/v1/keys/logged", body=b"data")
    shared_server.request("GET", "/v1/keys/logged", token="read")
    shared_server.request("GET", "/v1/keys/logged", headers={"Authorization": f"Bearer {shared_server.write_token}z"}, token=None)
    log = shared_server.log()
    assert "PUT /v1/keys/logged 201" in log
    for secret in (shared_server.write_token, shared_server.read_token, shared_server.write_token[5:20]):
        assert secret not in log
    assert "Bearer" not in log and "Authorization" not in log


def test_revoked_token_is_refused_and_new_one_accepted_while_serving(shared_server):
    tokens = TokenStore(shared_server.store)
    token = tokens.create("short-lived", "read")
    assert poll_status(shared_server, token) == 200
    tokens.revoke("short-lived")
    assert poll_status(shared_server, token, want=401) == 401


def poll_status(server, token: str, want: int = 200, timeout: float = 10) -> int:
    import time

    deadline = time.monotonic() + timeout
    status = 0
    while time.monotonic() < deadline:
        status = server.request("GET", "/v1/log", headers={"Authorization": f"Bearer {token}"}, token=None).status
        if status == want:
            break
        time.sleep(0.1)
    return status


def test_token_cli_create_list_revoke(cli, store_path):
    created = cli("token", "create", "--scope", "write", "--name", "ci", "--json")
    assert created.code == 0, created.stderr
    document = json.loads(created.stdout)
    assert document["name"] == "ci" and document["scope"] == "write" and document["token"].startswith("imst_")
    assert cli("token", "create", "--scope", "write", "--name", "ci").code == 2
    assert cli("token", "create", "--scope", "admin", "--name", "x").code == 2
    listed = cli("token", "list", "--json")
    assert [(t["name"], t["scope"]) for t in json.loads(listed.stdout)] == [("ci", "write")]
    assert document["token"] not in listed.out
    assert cli("token", "revoke", "ci").code == 0
    assert cli("token", "revoke", "ci").code == 3
    assert json.loads(cli("token", "list", "--json").stdout) == []


def test_authenticator_compares_hashes_and_rejects_everything_else(store_path):
    tokens = TokenStore(store_path)
    write = tokens.create("w", "write")
    read = tokens.create("r", "read")
    auth = Authenticator(tokens)
    assert auth.scope_for(f"Bearer {write}") == "write"
    assert auth.scope_for(f"bearer {read}") == "read"
    for bad in (None, "", "Bearer", f"Token {write}", f"Bearer {write[:-1]}", f"Bearer {write} {read}"):
        assert auth.scope_for(bad) is None, bad


def test_non_loopback_address_without_token_is_refused(store_path):
    result = subprocess.run(
        [*IMSTORE, "--store", str(store_path), "serve", "--host", "0.0.0.0", "--port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "imstore token create" in result.stderr


def test_plain_http_on_a_lan_address_warns_and_tls_silences_it(store_path):
    tokens = TokenStore(store_path)
    tokens.create("w", "write")
    warnings: list[str] = []
    check_binding(GatewayConfig(str(store_path), host="192.168.1.10"), Authenticator(tokens), warnings.append)
    assert warnings and "clear" in warnings[0]
    warnings.clear()
    check_binding(GatewayConfig(str(store_path), host="192.168.1.10", tls_cert="c", tls_key="k"), Authenticator(tokens), warnings.append)
    check_binding(GatewayConfig(str(store_path), host="127.0.0.1"), Authenticator(TokenStore(store_path / "none")), warnings.append)
    assert warnings == []


def test_a_token_created_while_serving_works_from_its_first_request(shared_server):
    """Tokens were reloaded at most once a second, so a new one was refused for up to ~1.2 s. Each new
    token is used right after the request before it (which made the server look at the file)."""
    tokens = TokenStore(shared_server.store)
    for number in range(5):
        assert shared_server.request("GET", "/v1/log?limit=1", token="read").status == 200
        token = tokens.create(f"at-once-{number}", "read")
        reply = shared_server.request("GET", "/v1/log?limit=1", headers={"Authorization": f"Bearer {token}"}, token=None)
        assert reply.status == 200, (number, reply.body)
        tokens.revoke(f"at-once-{number}")


def test_an_authenticator_looks_at_the_file_again_on_a_miss_and_only_then(store_path, monkeypatch):
    from imstore.server import auth

    tokens = TokenStore(store_path)
    known = tokens.create("known", "read")
    authenticator = Authenticator(tokens)
    loads = []
    real_load = TokenStore.load
    monkeypatch.setattr(TokenStore, "load", lambda self: loads.append(1) or real_load(self))
    for _ in range(20):
        assert authenticator.scope_for(f"Bearer {known}") == "read"
        assert authenticator.scope_for("Bearer not-a-token") is None  # a miss: a stat, no reload (unchanged file)
    assert loads == []
    fresh = tokens.create("fresh", "write")
    loads.clear()
    assert authenticator.scope_for(f"Bearer {fresh}") == "write" and len(loads) == 1
    assert auth.token_file_warning(tokens.path) is None  # created 0600
    tokens.path.chmod(0o644)
    assert "can be read by other users" in auth.token_file_warning(tokens.path)
