"""The proof commands: key, checkpoint, prove, check-proof and verify --since, as a user runs them."""

from __future__ import annotations

import json
import os

from imstore import Store
from tests.conftest import run_cli_in_process


def fill(cli, count: int = 6) -> None:
    for number in range(count):
        assert cli("put", f"doc{number % 2}", stdin=f"text {number}".encode()).code == 0


def test_prove_then_check_offline_with_the_verifier_key(cli, tmp_path):
    fill(cli)
    verifier = cli("key").out.strip()
    assert cli("prove", "doc1", "--version", "2", "-o", str(tmp_path / "doc.proof")).code == 0
    # The checker has no store: it must need none.
    offline = {"IMSTORE_DIR": str(tmp_path / "no-store-here")}
    checked = run_cli_in_process(["check-proof", str(tmp_path / "doc.proof"), "--key", verifier, "--json"], env=offline)
    assert checked.code == 0, checked.stderr
    record = json.loads(checked.out)["record"]
    assert (record["key"], record["version"], record["seq"]) == ("doc1", 2, 4)
    assert not (tmp_path / "no-store-here").exists()
    plain = run_cli_in_process(["check-proof", str(tmp_path / "doc.proof"), "--key", verifier], env=offline)
    assert plain.out.split("\t")[:2] == ["doc1", "2"] and "proven" in plain.stderr


def test_a_tampered_proof_is_exit_5_saying_what_failed(cli, tmp_path):
    fill(cli)
    verifier = cli("key").out.strip()
    document = json.loads(cli("prove", "doc0").out)
    document["inclusion"][0] = document["inclusion"][1]
    (tmp_path / "bad.proof").write_text(json.dumps(document, separators=(",", ":")))
    result = run_cli_in_process(["check-proof", str(tmp_path / "bad.proof"), "--key", verifier])
    assert result.code == 5
    assert "inclusion proof does not lead to the checkpoint's root" in result.stderr


def test_a_pretty_printed_proof_still_checks_but_not_one_with_a_field_twice(cli, tmp_path):
    fill(cli)
    verifier = cli("key").out.strip()
    document = json.loads(cli("prove", "doc1", "--version", "2").out)
    (tmp_path / "pretty.proof").write_text(json.dumps(document, indent=4, ensure_ascii=False) + "\n", "utf-8")
    result = run_cli_in_process(["check-proof", str(tmp_path / "pretty.proof"), "--key", verifier, "--json"])
    assert result.code == 0, result.stderr
    assert json.loads(result.out)["record"]["version"] == 2
    compact = json.dumps(document, separators=(",", ":"))
    (tmp_path / "twice.proof").write_text(compact.replace('"seq":', '"seq":1,"seq":', 1))
    result = run_cli_in_process(["check-proof", str(tmp_path / "twice.proof"), "--key", verifier])
    assert result.code == 5 and "twice" in result.stderr


def test_a_proof_checked_with_another_stores_key_is_exit_5(cli, tmp_path):
    fill(cli)
    with Store.init(tmp_path / "other")[0] as other:
        other_key = other.verifier_key()
    (tmp_path / "doc.proof").write_bytes(cli("prove", "doc0").stdout)
    result = run_cli_in_process(["check-proof", str(tmp_path / "doc.proof"), "--key", other_key])
    assert result.code == 5 and "not signed by the key" in result.stderr


def test_checkpoint_then_verify_since_as_the_log_grows(cli, tmp_path):
    fill(cli)
    (tmp_path / "old.checkpoint").write_bytes(cli("checkpoint").stdout)
    fill(cli, 3)
    result = cli("verify", "--since", str(tmp_path / "old.checkpoint"), "--json")
    assert result.code == 0, result.stderr
    assert json.loads(result.out)["old_size"] == 6 and json.loads(result.out)["checkpoint"]["size"] == 9
    document = cli("prove", "--since", str(tmp_path / "old.checkpoint")).stdout
    checked = run_cli_in_process(["check-proof", "-", "--key", cli("key").out.strip()], stdin=document)
    assert checked.code == 0 and "extends the checkpoint at 6 records" in checked.stderr


def test_a_log_cut_at_a_frame_boundary_is_caught_by_verify_since(cli, store_path, tmp_path):
    fill(cli)
    (tmp_path / "old.checkpoint").write_bytes(cli("checkpoint").stdout)
    with Store.open(store_path) as store:
        frames = list(store.log.scan(0))
        log_path = store.log.path
    os.truncate(log_path, frames[-2].offset)
    assert cli("reindex").code == 0  # even after the operator rebuilt the index over the shorter log
    result = cli("verify", "--since", str(tmp_path / "old.checkpoint"))
    assert result.code == 5
    assert "fewer than the 6 of the old checkpoint" in result.stderr


def test_checkpoint_json_names_its_lines(cli):
    fill(cli, 2)
    document = json.loads(cli("checkpoint", "--json").out)
    assert document["size"] == 2 and document["checkpoint"].startswith(document["origin"] + "\n2\n")


def test_usage_errors_are_exit_2(cli, tmp_path):
    assert cli("prove").code == 2
    assert cli("prove", "doc0", "--since", str(tmp_path / "x")).code == 2
    assert cli("prove", "doc0", "--version", "1", "--at", "2020-01-01").code == 2
    assert cli("verify", "--key", "x+y+z").code == 2
    assert run_cli_in_process(["check-proof", "-", "--key", "not a key"], stdin=b"{}").code == 2


def test_export_with_proofs_is_checked_offline_file_by_file(cli, tmp_path):
    fill(cli)
    assert cli("put", "deep/er/file", stdin=b"nested").code == 0
    out = tmp_path / "handover"
    assert cli("export", str(out), "--proofs").code == 0
    verifier = (out / ".imstore-proofs" / "key").read_text().strip()
    assert verifier == cli("key").out.strip()
    offline = {"IMSTORE_DIR": str(tmp_path / "no-store-here")}
    checked = run_cli_in_process(["check-proof", str(out), "--key", verifier, "--json"], env=offline)
    assert checked.code == 0, checked.stderr
    assert sorted(item["key"] for item in json.loads(checked.out)["checked"]) == ["deep/er/file", "doc0", "doc1"]
    one = run_cli_in_process(["check-proof", str(out / ".imstore-proofs" / "doc1.proof"), "--key", verifier, "--content",
                              str(out / "doc1")])  # fmt: skip
    assert one.code == 0, one.stderr
    (out / "doc1").write_text("not what was exported")
    tampered = run_cli_in_process(["check-proof", str(out), "--key", verifier])
    assert tampered.code == 5 and "does not hold the proven version of 'doc1'" in tampered.stderr
    (out / "doc1").unlink()
    (out / ".imstore-proofs" / "doc1.proof").unlink()
    (out / "smuggled").write_text("never in the store")
    smuggled = run_cli_in_process(["check-proof", str(out), "--key", verifier])
    assert smuggled.code == 5 and "have no proof, e.g. smuggled" in smuggled.stderr


def test_export_proofs_needs_a_directory(cli, tmp_path):
    fill(cli, 1)
    assert cli("export", str(tmp_path / "out.tar"), "--proofs").code == 2
