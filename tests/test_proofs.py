"""The tree a store keeps, and the proof documents made from it and checked offline."""

from __future__ import annotations

import json
import shutil

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imstore import Store, proofcheck, proofs
from imstore.errors import CorruptLog, ProofFailed
from imstore.model import BatchItem
from imstore.treestore import STRIDE
from tests.test_merkle import ref_mth


def log_payloads(store: Store) -> list[bytes]:
    """Every record's payload bytes, straight from the log file: the reference's leaves."""
    raw = store.log.path.read_bytes()
    return [raw[offset : offset + length] for frame in store.log.scan(0) for offset, length in frame.spans]


def store_root(store: Store) -> tuple[int, bytes]:
    return proofs.tree_head(store)


def add_batch(store: Store, name: str, count: int) -> None:
    items = []
    for number in range(count):
        object_id, size = store.write_object([f"{name} {number}".encode()])
        items.append(BatchItem(f"{name}/{number % 3}", object_id, size))
    store.import_batch(items)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(frames=st.lists(st.integers(min_value=1, max_value=9), min_size=1, max_size=12))
def test_the_kept_tree_equals_the_reference_mth_of_the_log_batches_included(tmp_path_factory, frames):
    with Store.init(tmp_path_factory.mktemp("s") / "store")[0] as store:
        for number, count in enumerate(frames):
            if count == 1:
                store.put(f"k{number % 4}", f"value {number}".encode())
            else:
                add_batch(store, f"b{number}", count)
            payloads = log_payloads(store)
            assert store_root(store) == (len(payloads), ref_mth(payloads))


def test_the_tree_is_rebuilt_when_missing_or_the_index_is(store):
    for number in range(20):
        store.put(f"k{number}", b"x" * number)
    add_batch(store, "batch", 5)
    table = lambda: store.indexer.tree(store.indexer.current())  # noqa: E731
    assert table().stored().size == STRIDE
    store.indexer.current().db.execute("DROP TABLE merkle")
    assert table().stored().size == 0
    assert store_root(store) == (25, ref_mth(log_payloads(store)))  # fewer than 2 * STRIDE behind: read from the log
    for number in range(STRIDE):
        store.put(f"more{number}", b"z")  # the next write of the table makes it again, from the log
    assert table().stored().size == 2 * STRIDE
    assert store_root(store) == (25 + STRIDE, ref_mth(log_payloads(store)))
    store.indexer.current().db.execute("DELETE FROM merkle WHERE id % 7 = 3")  # holes: a proof that needs them rebuilds
    assert store_root(store) == (25 + STRIDE, ref_mth(log_payloads(store)))
    assert table().db.execute("SELECT count(*) FROM merkle WHERE id % 7 = 3").fetchone()[0]
    store.indexer.current().db.execute("DELETE FROM merkle WHERE id % 5 = 1")  # holes: rebuilt by the next write of the table
    for number in range(STRIDE):
        store.put(f"again{number}", b"z")
    assert table().db.execute("SELECT count(*) FROM merkle WHERE id % 5 = 1").fetchone()[0]
    assert store_root(store) == (25 + 2 * STRIDE, ref_mth(log_payloads(store)))
    table().add_frame = lambda frame, payload=None: None  # writes the hook never hears of
    for number in range(2 * STRIDE):
        store.put(f"unheard{number}", b"z")
    assert table().stored().size == 3 * STRIDE
    assert store_root(store) == (25 + 4 * STRIDE, ref_mth(log_payloads(store)))  # the proof catches the table up first
    assert table().stored().size == 25 + 4 * STRIDE
    assert store.reindex() == 25 + 4 * STRIDE
    assert store_root(store) == (25 + 4 * STRIDE, ref_mth(log_payloads(store)))


# ---------------------------------------------------------------- inclusion
@pytest.fixture
def filled(store) -> Store:
    for number in range(30):
        store.put(f"key{number % 5}", f"content {number}".encode(), message=f"change {number}")
    add_batch(store, "batch", 4)
    return store


def test_an_inclusion_proof_checks_offline_and_names_the_version(filled):
    verifier = proofs.signer(filled).verifier
    document = proofs.render(proofs.prove(filled, "key3", version=2))
    proven = proofcheck.check_document(document, verifier)
    assert (proven.record.key, proven.record.version) == ("key3", 2)
    assert proven.record.hash == filled.resolve("key3", 2).hash
    assert proven.checkpoint.size == 34
    latest = proofcheck.check_document(proofs.render(proofs.prove(filled, "batch/1")), verifier)
    assert (latest.record.key, latest.record.version) == ("batch/1", 1)


def same_document(changed: str, original: bytes) -> bool:
    """Does changed spell the same JSON document as original (only the formatting differs)?"""
    try:
        return json.loads(changed) == json.loads(original)
    except ValueError:
        return False


def test_every_single_byte_change_to_an_inclusion_proof_document_is_rejected(filled):
    verifier = proofs.signer(filled).verifier
    document = proofs.render(proofs.prove(filled, "key1", version=3)).encode()
    original = proofcheck.check_document(document.decode(), verifier)
    rejected = reformatted = 0
    for position in range(len(document)):
        for replacement in {document[position] ^ 0x01, ord(" "), ord("0")} - {document[position]}:
            changed = (document[:position] + bytes([replacement]) + document[position + 1 :]).decode("ascii")
            if same_document(changed, document):  # whitespace JSON ignores: the same document, so the same proof
                assert proofcheck.check_document(changed, verifier) == original
                reformatted += 1
                continue
            with pytest.raises(ProofFailed):
                proofcheck.check_document(changed, verifier)
            rejected += 1
    assert rejected > 2 * len(document) and reformatted <= 2  # only the final newline can become a space


def test_a_reformatted_document_is_accepted_but_not_a_field_given_twice(filled):
    verifier = proofs.signer(filled).verifier
    document = proofs.render(proofs.prove(filled, "key1", version=3))
    pretty = json.dumps(json.loads(document), indent=2, ensure_ascii=False)  # as an editor or jq would write it
    assert "\u2014" in pretty and proofcheck.check_document(pretty, verifier) == proofcheck.check_document(document, verifier)
    twice = document.replace('"seq":', '"seq":1,"seq":', 1)
    assert json.loads(twice)["seq"] == json.loads(document)["seq"]  # a lenient reader would take the last one
    with pytest.raises(ProofFailed, match="twice"):
        proofcheck.check_document(twice, verifier)
    with pytest.raises(ProofFailed, match="NaN"):
        proofcheck.check_document(document.replace('"seq":', '"seq":NaN,"x":', 1), verifier)
    seq = json.loads(document)["seq"]
    with pytest.raises(ProofFailed, match="not a record number"):  # the same number, but not an integer
        proofcheck.check_document(document.replace(f'"seq":{seq},', f'"seq":{seq}.0,', 1), verifier)


def test_a_proof_for_a_record_after_damage_is_refused_not_made(filled, tmp_path):
    frames = list(filled.log.scan(0))
    raw = bytearray(filled.log.path.read_bytes())
    raw[frames[10].offset + 25] ^= 0xFF  # rot inside the 11th record's payload
    filled.close()
    copy = tmp_path / "damaged"
    shutil.copytree(filled.root, copy)
    (copy / "log" / filled.log.path.name).write_bytes(bytes(raw))
    with Store.open(copy) as damaged:
        damaged.reindex()
        proofcheck.check_document(proofs.render(proofs.prove(damaged, "key0", version=1)), proofs.signer(damaged).verifier)
        with pytest.raises(CorruptLog, match="cannot be proven"):
            proofs.prove(damaged, "key4", version=6)


# ---------------------------------------------------------------- consistency
def test_a_grown_log_is_consistent_with_its_old_checkpoint(filled):
    old = proofs.checkpoint(filled)
    for number in range(7):
        filled.put(f"new{number}", b"more")
    document = proofs.prove_since(filled, old)
    proven = proofcheck.check_document(proofs.render(document), proofs.signer(filled).verifier)
    assert (proven.old.size, proven.checkpoint.size) == (34, 41)
    assert proofs.verify_since(filled, old).checkpoint.size == 41


def test_every_single_byte_change_to_a_consistency_proof_document_is_rejected(filled):
    old = proofs.checkpoint(filled)
    filled.put("later", b"x")
    verifier = proofs.signer(filled).verifier
    document = proofs.render(proofs.prove_since(filled, old)).encode()
    for position in range(len(document)):
        replacement = document[position] ^ 0x01
        changed = (document[:position] + bytes([replacement]) + document[position + 1 :]).decode("ascii")
        assert not same_document(changed, document)
        with pytest.raises(ProofFailed):
            proofcheck.check_document(changed, verifier)


def test_an_old_checkpoint_replayed_as_new_is_rejected(filled):
    old = proofs.checkpoint(filled)
    filled.put("later", b"x")
    new = proofs.checkpoint(filled)
    verifier = proofs.signer(filled).verifier
    replayed = proofs.render({"checkpoint": old, "old": new, "consistency": []})
    with pytest.raises(ProofFailed, match="smaller"):
        proofcheck.check_document(replayed, verifier)


def test_a_truncated_log_is_caught_by_verify_since(filled):
    checkpoint = proofs.checkpoint(filled)
    frames = list(filled.log.scan(0))
    filled.close()
    with open(filled.log.path, "r+b") as handle:
        handle.truncate(frames[-3].offset)  # cut cleanly at a frame boundary: nothing in the log itself shows it
    with Store.open(filled.root) as cut:
        cut.reindex()  # the operator accepted the shorter log: the index cannot witness the loss any more
        with pytest.raises(ProofFailed, match="fewer than"):
            proofs.verify_since(cut, checkpoint)


def test_a_rewritten_history_is_caught_by_verify_since(filled, tmp_path):
    checkpoint = proofs.checkpoint(filled)
    filled.close()
    forged_root = tmp_path / "forged"
    shutil.copytree(filled.root, forged_root)
    frames = list(Store.open(forged_root).log.scan(0))
    with open(forged_root / "log" / filled.log.path.name, "r+b") as handle:
        handle.truncate(frames[20].offset)  # keep 20 records, then write other history on top, longer than before
    with Store.open(forged_root) as forged:
        forged.reindex()
        for number in range(30):
            forged.put(f"forged{number}", b"other")
        with pytest.raises(ProofFailed, match="rewritten"):
            proofs.verify_since(forged, checkpoint)


def test_a_checkpoint_of_another_store_is_refused(filled, tmp_path):
    with Store.init(tmp_path / "other")[0] as other:
        other.put("a", b"b")
        foreign = proofs.checkpoint(other)
        with pytest.raises(ProofFailed):
            proofs.verify_since(filled, foreign)
        with pytest.raises(ProofFailed, match="another log"):
            proofs.verify_since(filled, foreign, proofs.signer(other).verifier)


def test_documents_are_compact_json_with_the_contracts_fields(filled):
    document = proofs.render(proofs.prove(filled, "key2"))
    assert list(json.loads(document)) == ["checkpoint", "seq", "leaf", "inclusion"]
    assert document.isascii() and document.endswith("}\n") and ": " not in document


def test_frames_another_process_appended_reach_the_tree_on_the_next_open(store_path):
    """A writer that died between its log fsync and its index update: readers catch index and tree up together."""
    with Store.open(store_path) as writer:
        writer.put("before", b"1")
        writer.indexer.applied = lambda frame, payload=None: None  # the index (and so the tree) never hears of these frames
        writer.put("lost to the index", b"2")
        add_batch(writer, "batch", 3)
    with Store.open(store_path) as reader:
        assert store_root(reader) == (5, ref_mth(log_payloads(reader)))
        proofcheck.check_document(proofs.render(proofs.prove(reader, "batch/2")), proofs.signer(reader).verifier)


def test_the_last_checkpoint_is_reused_only_for_the_same_tree_and_key(filled):
    cache = filled.root / "checkpoint.latest"
    first = proofs.checkpoint(filled)
    assert cache.read_text().endswith(first)
    cache.write_text(cache.read_text().replace(first, first.replace("\u2014 ", "\u2014 x")))  # rot: the checksum fails
    again = proofs.checkpoint(filled)
    assert again == first  # signed afresh: Ed25519 gives the same bytes
    (filled.root / "checkpoint.key").unlink()  # a new key: the cached note is not its
    renewed = proofs.checkpoint(filled)
    assert renewed != first
    proofcheck.check_document(proofs.render(proofs.prove(filled, "key0")), proofs.signer(filled).verifier)
    filled.put("grown", b"x")
    grown = proofs.checkpoint(filled)
    assert grown.split("\n")[1] == "35" and cache.read_text().endswith(grown)


values = st.one_of(st.text(), st.integers(), st.lists(st.text()), st.booleans(), st.none(), st.floats(allow_nan=False))


@settings(max_examples=300)
@given(document=st.dictionaries(st.text(), values))
def test_documents_are_written_exactly_as_json_dumps_writes_them(document):
    assert proofs.render(document) == json.dumps(document, separators=(",", ":"), ensure_ascii=True) + "\n"
