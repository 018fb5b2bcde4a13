"""imstore repair --from SOURCE: a damaged log stretch or object is healed from a replica only when proven the same bytes."""

from __future__ import annotations

import json
import os
from pathlib import Path

from imstore import Store, layout
from imstore.feed import PathSource
from imstore.replica import clone
from tests.conftest import run_cli_in_process
from tests.test_replica import SEGMENT, fill, log_bytes


def pair(tmp_path: Path) -> tuple[Path, Path]:
    source = tmp_path / "source"
    Store.init(source)[0].close()
    fill(source, 6, size=3000)
    copy = tmp_path / "copy"
    clone(PathSource(source), copy)
    return source, copy


def frame_offsets(root: Path) -> list[tuple[int, int]]:
    with Store.open(root) as store:
        return [(frame.offset, frame.end) for frame in store.log.scan(0)]


def flip(path: Path, offset: int) -> None:
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x20
    path.write_bytes(bytes(data))


def verify(root: Path) -> dict:
    return json.loads(run_cli_in_process(["--store", str(root), "--json", "verify"]).out)


def test_a_flipped_byte_in_the_middle_of_the_log_is_healed_from_the_replica(tmp_path: Path):
    source, copy = pair(tmp_path)
    offset, end = frame_offsets(copy)[2]
    flip(copy / SEGMENT, offset + 40)
    assert not verify(copy)["ok"]
    result = run_cli_in_process(["--store", str(copy), "--json", "repair", "--from", str(source)])
    assert result.code == 0, result.stderr
    assert json.loads(result.out)["log_stretches"] == [f"{offset}-{end}"]
    assert log_bytes(copy) == log_bytes(source) and verify(copy)["ok"]
    with Store.open(copy) as store, Store.open(source) as original:
        assert store.get("k2") == original.get("k2")


def test_damage_at_the_log_s_end_cannot_be_proven_and_nothing_is_written(tmp_path: Path):
    source, copy = pair(tmp_path)
    offset, _end = frame_offsets(copy)[-1]
    flip(copy / SEGMENT, offset + 40)
    before = log_bytes(copy)
    result = run_cli_in_process(["--store", str(copy), "repair", "--from", str(source)])
    assert result.code == 5 and "nothing in this log can prove" in result.stderr, result.stderr
    assert log_bytes(copy) == before


def test_a_replica_with_other_bytes_there_is_refused(tmp_path: Path):
    source, copy = pair(tmp_path)
    other = tmp_path / "other"  # the same store id, another history from the first record on
    layout.create_store(other, (source / "config").read_bytes())
    fill(other, 6, size=3000)
    offset, _end = frame_offsets(copy)[2]
    flip(copy / SEGMENT, offset + 40)
    before = log_bytes(copy)
    result = run_cli_in_process(["--store", str(copy), "repair", "--from", str(other)])
    assert result.code == 5 and "not repaired" in result.stderr, result.stderr
    assert log_bytes(copy) == before


def test_a_damaged_object_is_healed_by_bytes_that_hash_to_it(tmp_path: Path):
    source, copy = pair(tmp_path)
    with Store.open(copy) as store:
        object_id = store.resolve("k3").hash
        path = store.objects.loose_path(object_id)
    flip(path, 100)
    assert not verify(copy)["ok"]
    result = run_cli_in_process(["--store", str(copy), "--json", "repair", "--from", str(source)])
    assert result.code == 0 and json.loads(result.out)["objects"] == [object_id], result.stderr
    assert verify(copy)["ok"]


def test_a_damaged_object_inside_a_pack_is_healed_and_the_pack_is_never_written(tmp_path: Path):
    from imstore.packs import PackIndex
    from tests.test_replica import import_tree

    source = tmp_path / "source"
    Store.init(source)[0].close()
    import_tree(source, tmp_path, files=70)
    import_tree(source, tmp_path, files=70)  # two packs: repack has something to merge afterwards
    copy = tmp_path / "copy"
    clone(PathSource(source), copy)
    with Store.open(copy) as store:
        version = store.resolve("t/f33")
        location = store.objects.locate(version.hash)
    assert location.path.suffix == ".pack", "the clone took the pack whole"
    flip(location.path, location.offset + 7)
    damaged_pack = location.path.read_bytes()
    report = verify(copy)
    assert not report["ok"] and any(version.hash in problem for problem in report["problems"])

    result = run_cli_in_process(["--store", str(copy), "--json", "repair", "--from", str(source)])
    assert result.code == 0, result.stderr
    document = json.loads(result.out)
    assert document["objects"] == [version.hash]
    assert document["superseded"] == [f"{version.hash} in {location.path.name}"]
    assert location.path.read_bytes() == damaged_pack  # nothing written is ever changed: the pack is as it was
    healed = verify(copy)
    assert healed["ok"] and any(version.hash in note and location.path.name in note for note in healed["notes"])
    with Store.open(copy) as store, Store.open(source) as original:
        assert store.get("t/f33") == original.get("t/f33")
    third = tmp_path / "third"  # a replica of the healed node gets the good copy (its pack fails the check, its objects come one by one)
    assert run_cli_in_process(["clone", str(copy), str(third)]).code == 0
    assert verify(third)["ok"] and log_bytes(third) == log_bytes(source)

    repacked = run_cli_in_process(["--store", str(copy), "--json", "repack"])
    assert repacked.code == 0, repacked.stderr
    assert not location.path.exists()  # the damaged slice went with its pack; the good loose copy stands
    repacked_report = verify(copy)
    assert repacked_report["ok"] and not any(version.hash in note for note in repacked_report["notes"])
    with Store.open(copy) as store, Store.open(source) as original:
        assert store.get("t/f33") == original.get("t/f33")
        assert all(PackIndex(path).find(version.hash) is None for path in (copy / "objects/pack").glob("*.idx"))
