"""Epochs (R7) and promotion (R9) in a store: the epoch record's shape, its place in the index, verify and the
Merkle tree, the frame check that refuses a wrong or lower epoch, and the role file that keeps a standby's log
for its primary's frames only."""

from __future__ import annotations

import json
import signal

import msgpack
import pytest

from imstore import Store, proofcheck, proofs
from imstore.errors import BadUpstream, CorruptLog, Unavailable
from imstore.failover import STANDBY, promote, read_role, write_role
from imstore.feed import PathSource
from imstore.records import EPOCH_OP, HEADER_SIZE, Chain, decode_payload, encode_record, epoch_meta, frame_bytes
from imstore.replica import check_frames, clone, pull
from tests.conftest import run_cli_in_process, run_cli_process
from tests.test_merkle import ref_mth
from tests.test_proofs import log_payloads
from tests.test_replica import FakeUpstream, fill, log_bytes


@pytest.fixture
def primary(tmp_path):
    root = tmp_path / "primary"
    Store.init(root)[0].close()
    fill(root, 3)
    return root


def standby_of(primary, tmp_path, name="standby"):
    copy = tmp_path / name
    clone(PathSource(primary), copy)
    write_role(copy, STANDBY)
    return copy


def test_promote_appends_one_epoch_record_that_no_listing_shows(primary, tmp_path):
    copy = standby_of(primary, tmp_path)
    with Store.open(copy) as store:
        before = store.indexer.current().state()
        document = promote(store, node="b:/data")
        assert document == {"epoch": 1, "seq": before.seq + 1, "fork_seq": before.seq, "fork_hash": before.last_hash.hex(),
                            "node": "b:/data"}  # fmt: skip
        assert store.indexer.current().epochs() == [(1, before.seq + 1, before.seq, before.last_hash.hex(), "b:/data")]
        assert read_role(copy) == "primary" and not (copy / "upstream").exists()
        assert [version.key for version in store.log_records()] == ["k0", "k1", "k2"]
        assert all(version.key for version in store.ls(include_deleted=True))
        store.put("after", b"written by the new primary")
        report = store.verify()
        assert report.ok, report.problems
        assert report.records == 4 and report.keys == 4
    # the epoch record is in the log and in the Merkle tree like any record (one leaf per record)
    with Store.open(copy) as store:
        leaves = log_payloads(store)
        assert len(leaves) == 5 and decode_payload(leaves[3])[0].op == EPOCH_OP
        assert proofs.tree_head(store) == (5, ref_mth(leaves))
        proven = proofcheck.check_document(proofs.render(proofs.prove(store, "after")), proofs.signer(store).verifier)
        assert proven.record.key == "after" and proven.checkpoint.size == 5


def test_a_rebuilt_index_finds_the_epoch_again(primary, tmp_path):
    copy = standby_of(primary, tmp_path)
    with Store.open(copy) as store:
        promote(store)
    (copy / "index.sqlite").unlink()
    with Store.open(copy) as store:
        assert store.indexer.current().epoch() == 1


def test_a_standby_takes_no_local_write_and_a_promoted_one_does(primary, tmp_path):
    copy = standby_of(primary, tmp_path)
    with Store.open(copy) as store:
        with pytest.raises(Unavailable, match="standby"):
            store.put("local", b"x")
        fill(primary, 1, prefix="more")
        assert pull(store, PathSource(primary)).records == 1  # its primary's frames still go in
        promote(store)
        store.put("local", b"x")
    assert run_cli_in_process(["--store", str(copy), "put", "cli", "-"], stdin=b"y").code == 0


def test_promoting_a_store_that_follows_nothing_is_refused(primary):
    result = run_cli_in_process(["--store", str(primary), "promote"])
    assert result.code == 2 and "primary already" in result.stderr


def epoch_payload(seq: int, prev: bytes, epoch: int, **changes) -> bytes:
    fields = dict(seq=seq, time_ns=1, op=EPOCH_OP, key="", version=epoch, hash=None, size=0, content_type=None,
                  meta=epoch_meta(seq - 1, prev, "n:/x"), message=None, prev=prev)  # fmt: skip
    fields.update(changes)
    return encode_record(**fields)


@pytest.mark.parametrize("change", [dict(key="k"), dict(size=1), dict(hash="ab" * 32), dict(meta={"node": "n"}),
                                    dict(meta=epoch_meta(3, b"\x01" * 32, "n"))])  # fmt: skip
def test_an_epoch_record_in_any_other_shape_is_damage(change):
    good = epoch_payload(5, b"\x02" * 32, 1)
    assert decode_payload(good)[0].is_epoch
    with pytest.raises(CorruptLog, match="epoch"):
        decode_payload(epoch_payload(5, b"\x02" * 32, 1, **change))
    with pytest.raises(CorruptLog, match="alone"):
        decode_payload(msgpack.packb([good], use_bin_type=True))


def forged_epoch_frame(store: Store, epoch: int) -> bytes:
    state = store.indexer.current().state()
    return frame_bytes(epoch_payload(state.seq + 1, state.last_hash, epoch))


def test_shipped_frames_must_carry_the_next_epoch(primary, tmp_path):
    copy = standby_of(primary, tmp_path)
    with Store.open(copy) as store:
        state = store.indexer.current().state()
        for wrong in (0, 2, 3):
            with pytest.raises(BadUpstream, match="epoch"):
                check_frames(forged_epoch_frame(store, wrong), state.log_end, state.last_hash, state.seq, 0)
        assert len(check_frames(forged_epoch_frame(store, 2), state.log_end, state.last_hash, state.seq, 1)) == 1
        assert len(check_frames(forged_epoch_frame(store, 1), state.log_end, state.last_hash, state.seq, 0)) == 1


def test_a_source_at_a_lower_epoch_is_refused_and_nothing_is_written(primary, tmp_path):
    with Store.open(primary) as store:  # the primary was promoted once (epoch 1); the copy holds that
        (primary / "upstream").write_text("elsewhere\n")
        promote(store)
    copy = standby_of(primary, tmp_path)
    fill(primary, 2, prefix="more")
    before = log_bytes(copy)
    fake = FakeUpstream(primary, "epoch")  # serves true frames but says it is at epoch 0
    fake.epoch_header = "0"
    try:
        result = run_cli_in_process(["--store", str(copy), "pull", fake.url])
    finally:
        fake.close()
    assert result.code == 5 and "lower than this store's 1" in result.stderr, result.stderr
    assert log_bytes(copy) == before
    assert run_cli_in_process(["--store", str(copy), "pull", str(primary)]).code == 0
    assert log_bytes(copy) == log_bytes(primary)


def test_a_lying_upstream_cannot_ship_an_epoch_out_of_order(primary, tmp_path):
    copy = standby_of(primary, tmp_path)
    with Store.open(primary) as store, store.committer.writing() as index:  # a forged epoch 2 after none
        chain = Chain(index.state().seq, index.state().last_hash)
        chain.add(op=EPOCH_OP, key="", version=2, hash=None, size=0, meta=epoch_meta(chain.seq, chain.prev, "x"))
        store.committer._append(chain, promotion=True)
    before = log_bytes(copy)
    result = run_cli_in_process(["--store", str(copy), "pull", str(primary)])
    assert result.code == 5 and "epoch 2" in result.stderr, result.stderr
    assert log_bytes(copy) == before
    with Store.open(primary) as store:
        assert not store.verify().ok  # verify names the gap in the epochs too


# ============================================================ rejoin (R11)
def diverged_pair(primary, tmp_path):
    """A standby promoted (and written to) while the old primary wrote frames it never shipped."""
    copy = standby_of(primary, tmp_path)
    with Store.open(copy) as store:
        promote(store)
        store.put("new-primary", b"after the failover")
    fill(primary, 2, prefix="unreplicated")
    return copy


def test_rejoin_keeps_the_old_primary_s_extra_frames_aside_and_follows_the_new_one(primary, tmp_path):
    copy = diverged_pair(primary, tmp_path)
    old_log = log_bytes(primary)
    with Store.open(copy) as store:
        fork = store.indexer.current().epochs()[0]
    refused = run_cli_in_process(["--store", str(primary), "pull", str(copy)])
    assert refused.code == 5 and "diverged" in refused.stderr  # without rejoin: nothing written
    assert log_bytes(primary) == old_log
    result = run_cli_in_process(["--store", str(primary), "--json", "rejoin", str(copy)])
    assert result.code == 0, result.stderr
    document = json.loads(result.out)
    with Store.open(primary) as store:
        state = store.indexer.current().state()
    assert log_bytes(primary) == log_bytes(copy)
    orphan = primary / document["orphans"]
    assert orphan.read_bytes() == old_log[document["fork_offset"] :] and orphan.stat().st_mode & 0o777 == 0o444
    assert [record.key for frame in decode_frames(orphan.read_bytes()) for record in frame] == ["unreplicated0", "unreplicated1"]
    assert old_log[: document["fork_offset"]] == log_bytes(copy)[: document["fork_offset"]]
    assert fork[2] == 3 and state.seq == 5 and read_role(primary) == "standby"
    verified = run_cli_in_process(["--store", str(primary), "--json", "verify"])
    report = json.loads(verified.out)
    assert verified.code == 0 and report["ok"] and any("orphans/0-" in note for note in report["notes"]), verified.out
    with Store.open(primary) as store:
        assert store.get("new-primary") == b"after the failover"
        with pytest.raises(Exception, match="no key|not found"):
            store.get("unreplicated0")


def test_rejoin_of_a_store_that_is_only_behind_moves_nothing(primary, tmp_path):
    copy = standby_of(primary, tmp_path)
    with Store.open(copy) as store:
        promote(store)
    result = run_cli_in_process(["--store", str(primary), "--json", "rejoin", str(copy)])
    assert result.code == 0 and json.loads(result.out)["orphans"] is None, result.stderr
    assert log_bytes(primary) == log_bytes(copy) and not (primary / "log" / "orphans").exists()


def decode_frames(data: bytes):
    from imstore.records import HEADER

    position = 0
    while position < len(data):
        length = HEADER.unpack_from(data, position)[0]
        yield decode_payload(data[position + HEADER_SIZE : position + HEADER_SIZE + length])
        position += HEADER_SIZE + length


@pytest.mark.parametrize("point", ["rejoin-orphans-kept", "rejoin-log-cut"])
def test_a_rejoin_killed_mid_way_is_finished_by_another(primary, tmp_path, point):
    copy = diverged_pair(primary, tmp_path)
    old_log = log_bytes(primary)
    killed = run_cli_process(["--store", str(primary), "rejoin", str(copy)], env={"IMSTORE_CRASH_AT": point})
    assert killed.code == -signal.SIGKILL, killed.stderr
    again = run_cli_process(["--store", str(primary), "--json", "rejoin", str(copy)])
    assert again.code == 0, again.stderr
    assert log_bytes(primary) == log_bytes(copy)
    kept = list((primary / "log" / "orphans").iterdir())
    assert len(kept) == 1 and old_log.endswith(kept[0].read_bytes()) and len(kept[0].read_bytes()) > 0
    assert old_log[: len(old_log) - len(kept[0].read_bytes())] == log_bytes(copy)[: len(old_log) - len(kept[0].read_bytes())]
    assert verify_ok(primary)


def verify_ok(root) -> bool:
    result = run_cli_process(["--store", str(root), "--json", "verify"])
    return result.code == 0 and json.loads(result.out)["ok"]
