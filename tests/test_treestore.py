"""When the tree's table is written, from what, and how a proof reads the records after it (DESIGN P2)."""

from __future__ import annotations

from imstore import Store, merkle, proofcheck, proofs
from imstore.treestore import STRIDE
from tests.test_merkle import ref_mth
from tests.test_proofs import add_batch, log_payloads


def stored(store: Store):
    return store.indexer.tree(store.indexer.current()).stored()


def test_the_table_is_written_only_when_a_frame_crosses_a_multiple_of_stride(store):
    sizes = []
    for number in range(3 * STRIDE + 5):
        store.put(f"k{number}", b"v")
        sizes.append(stored(store).size)
    assert sizes[STRIDE - 2] == 0 and sizes[STRIDE - 1] == STRIDE  # the 16th record is the first write
    assert sorted(set(sizes)) == [0, STRIDE, 2 * STRIDE, 3 * STRIDE]
    table = store.indexer.tree(store.indexer.current())
    payloads = log_payloads(store)
    assert merkle.root(table, 3 * STRIDE) == ref_mth(payloads[: 3 * STRIDE])  # the stored prefix alone
    assert proofs.tree_head(store) == (len(payloads), ref_mth(payloads))  # + the 5 records after it, from the log


def test_a_batch_frame_is_stored_whole_and_the_table_ends_at_its_end(store):
    for number in range(STRIDE - 3):
        store.put(f"k{number}", b"v")
    add_batch(store, "batch", 7)  # records 14..20: crosses 16
    assert stored(store).size == STRIDE + 4
    assert stored(store).log_end == store.indexer.current().state().log_end
    assert proofs.tree_head(store) == (STRIDE + 4, ref_mth(log_payloads(store)))


def test_writers_that_did_not_see_the_records_before_read_them_from_the_log(store_path):
    for number in range(2 * STRIDE + 3):
        with Store.open(store_path) as writer:  # a process per put: it remembers only its own record
            writer.put(f"k{number}", f"value {number}".encode())
    with Store.open(store_path) as store:
        assert stored(store).size == 2 * STRIDE
        assert proofs.tree_head(store) == (2 * STRIDE + 3, ref_mth(log_payloads(store)))


def test_a_table_that_does_not_continue_into_the_log_is_rebuilt(store):
    for number in range(STRIDE + 2):
        store.put(f"k{number}", b"v")
    db = store.indexer.current().db
    db.execute("UPDATE merkle_end SET last_hash = ?", (b"\x07" * 32,))  # as if the table were of another log
    assert proofs.tree_head(store) == (STRIDE + 2, ref_mth(log_payloads(store)))
    assert stored(store).last_hash != b"\x07" * 32


def test_a_process_that_only_proves_opens_the_index_read_only(store_path):
    with Store.open(store_path) as writer:
        for number in range(3 * STRIDE):
            writer.put(f"k{number % 5}", f"value {number}".encode())
    with Store.open(store_path) as prover:
        document = proofs.prove(prover, "k3", version=2)
        assert proofs.tree_head(prover)[0] == 3 * STRIDE and prover._index is None  # P10: no read-write connection
    with Store.open(store_path) as writer:
        writer.put("later", b"x")
        writer.indexer.applied = lambda frame, payload=None: None  # the index is behind the log from here
        writer.put("unindexed", b"y")
    with Store.open(store_path) as prover:
        again = proofs.prove(prover, "unindexed")
        assert prover._index is not None  # behind: the Store's own index caught up first
    for proven in (document, again):
        proofcheck.check_document(proofs.render(proven), proofs.signer(prover).verifier)
