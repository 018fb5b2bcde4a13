"""Proofs over HTTP, and the remote CLI catching a server that rewrites or rolls back its history."""

from __future__ import annotations

import json
import os
import shutil
from urllib.parse import quote

import pytest
from conftest import run_cli_in_process

from imstore import Store, proofcheck, proofs
from imstore.checkpoint import Verifier, open_checkpoint

pytestmark = pytest.mark.timeout(180)


def fill(server, count: int, prefix: str = "doc") -> None:
    for number in range(count):
        reply = server.request("PUT", f"/v1/keys/{prefix}{number % 3}", body=f"{prefix} {number}".encode())
        assert reply.status in (200, 201), reply.body


def remote_cli(server, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(server.write_token + "\n")
    token_file.chmod(0o600)

    def run(*args, url=None, stdin=b""):
        return run_cli_in_process(["--remote", url or server.url, "--token-file", str(token_file), *args], stdin=stdin)

    return run


def test_the_proof_routes_answer_documents_that_check(server):
    fill(server, 7)
    served = server.request("GET", "/v1/checkpoint", token="read").json()
    verifier = Verifier.parse(served["key"])
    assert open_checkpoint(served["checkpoint"], verifier).size == 7
    with Store.open(server.store) as store:
        assert served["key"] == store.verifier_key()  # the same key the store signs with locally
    document = server.request("GET", "/v1/proofs/inclusion?key=doc1&version=2", token="read").json()
    proven = proofcheck.check_document(proofs.render(document), verifier)
    assert (proven.record.key, proven.record.version, proven.record.seq) == ("doc1", 2, 5)
    fill(server, 2, "more")
    answer = server.request("GET", "/v1/proofs/consistency?from=7", token="read").json()
    consistency = {"checkpoint": answer["checkpoint"], "old": served["checkpoint"], "consistency": answer["consistency"]}
    assert proofcheck.check_document(proofs.render(consistency), verifier).checkpoint.size == 9


def test_the_proof_routes_refuse_bad_requests(server):
    fill(server, 2)
    assert server.request("GET", "/v1/checkpoint", token=None).status == 401
    assert server.request("GET", "/v1/proofs/consistency", token="read").status == 400
    assert server.request("GET", "/v1/proofs/inclusion?key=nope", token="read").status == 404
    too_far = server.request("GET", "/v1/proofs/consistency?from=50", token="read")
    assert too_far.status == 500 and too_far.json()["error"] == "ProofFailed"
    assert server.request("GET", "/v1/proofs/inclusion?key=" + quote("doc0") + "&version=1&at=2020-01-01", token="read").status == 400


def test_remote_prove_and_check_offline(server, tmp_path):
    fill(server, 4)
    remote = remote_cli(server, tmp_path)
    key = remote("key")
    assert key.code == 0, key.stderr
    proof = remote("prove", "doc2")
    assert proof.code == 0, proof.stderr
    checked = run_cli_in_process(["check-proof", "-", "--key", key.out.strip(), "--json"], stdin=proof.stdout)
    assert checked.code == 0 and json.loads(checked.out)["record"]["key"] == "doc2"
    checkpoint = tmp_path / "old.checkpoint"
    checkpoint.write_bytes(remote("checkpoint").stdout)
    fill(server, 2, "later")
    assert remote("verify", "--since", str(checkpoint)).code == 0


def rewrite_history(store_path, keep: int, extra: int) -> None:
    """Keep the first `keep` records, then write `extra` others: the same store id and key, another history."""
    with Store.open(store_path) as store:
        frames = list(store.log.scan(0))
        log_path = store.log.path
    os.truncate(log_path, frames[keep].offset)
    with Store.open(store_path) as store:
        store.reindex()
        for number in range(extra):
            store.put(f"forged{number}", b"another history")


def test_a_server_that_rewrites_history_is_caught_on_the_next_call(start, store_path, tmp_path):
    server = start("--workers", "1")
    fill(server, 6)
    remote = remote_cli(server, tmp_path)
    assert remote("ls").code == 0  # the first call pins the key and remembers the checkpoint (6 records)
    fill(server, 2, "honest")
    assert remote("ls").code == 0  # the log grew: consistent, remembered (8 records)
    port = server.port
    server.stop()
    rewrite_history(store_path, keep=5, extra=10)  # longer than before, but not an extension of it
    server = start("--workers", "1", port=port)
    result = remote("ls")
    assert result.code == 5, result.stderr
    assert "does not extend the history it showed before" in result.stderr and "rewritten" in result.stderr
    assert remote("get", "doc0").code == 5  # and on every call after, until the user decides


def test_a_server_rolled_back_to_an_older_copy_is_caught(start, store_path, tmp_path):
    server = start("--workers", "1")
    fill(server, 3)
    port = server.port
    server.stop()
    backup = tmp_path / "backup"
    shutil.copytree(store_path, backup)
    server = start("--workers", "1", port=port)
    fill(server, 4, "new")
    remote = remote_cli(server, tmp_path)
    assert remote("ls").code == 0  # remembers 7 records
    server.stop()
    shutil.rmtree(store_path)
    shutil.copytree(backup, store_path)  # the old copy: 3 records, every one of them genuine
    server = start("--workers", "1", port=port)
    result = remote_cli(server, tmp_path)("ls")  # the same URL, so the same remembered checkpoint
    assert result.code == 5, result.stderr
    assert "fewer than the 7" in result.stderr


def test_a_server_that_signs_with_another_key_is_caught(start, store_path, tmp_path):
    server = start("--workers", "1")
    fill(server, 2)
    remote = remote_cli(server, tmp_path)
    assert remote("ls").code == 0
    port = server.port
    server.stop()
    (store_path / "checkpoint.key").unlink()  # a new key is made on the next checkpoint
    server = start("--workers", "1", port=port)
    result = remote("ls")
    assert result.code == 5 and "not signed by the key" in result.stderr


def test_a_damaged_state_file_is_an_error_not_a_skipped_check(server, tmp_path):
    from imstore.server.witness import state_file

    fill(server, 1)
    remote = remote_cli(server, tmp_path)
    assert remote("ls").code == 0
    state_file(server.url).write_text("{not json")
    result = remote("ls")
    assert result.code == 1 and "remove it to start trusting the server afresh" in result.stderr
