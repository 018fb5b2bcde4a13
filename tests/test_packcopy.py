"""A clone takes the source's packs whole (R13), and every byte of each is checked before it is installed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from imstore import Store
from imstore.errors import BadUpstream
from imstore.feed import PathSource
from imstore.packcopy import check_index, receive_pack
from imstore.packs import PackIndex
from imstore.replica import clone
from tests.conftest import run_cli_in_process, run_cli_process
from tests.test_replica import import_tree, log_bytes


@pytest.fixture
def packed(tmp_path: Path) -> Path:
    root = tmp_path / "source"
    Store.init(root)[0].close()
    import_tree(root, tmp_path, files=90)
    with Store.open(root) as store:
        store.put("loose", b"a loose object beside the pack")
    return root


def pack_files(root: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted((root / "objects/pack").iterdir())}


def verify_ok(root: Path) -> bool:
    return json.loads(run_cli_in_process(["--store", str(root), "--json", "verify"]).out)["ok"]


def the_copy(source: Path) -> tuple[str, int, bytes, bytes]:
    path = next((source / "objects/pack").glob("*.pack"))
    return path.stem, path.stat().st_size, path.with_suffix(".idx").read_bytes(), path.read_bytes()


@pytest.mark.parametrize("mode", ["fork", "thread"])
def test_a_clone_takes_the_packs_byte_for_byte(packed: Path, tmp_path: Path, monkeypatch, mode: str):
    copy = tmp_path / "copy"
    if mode == "fork":  # the CLI in a process of its own: one thread, so the pack copy is a forked child
        cloned = run_cli_process(["clone", str(packed), str(copy), "--json"])
        assert cloned.code == 0, cloned.stderr
        objects = json.loads(cloned.out)["objects"]
    else:  # a process running other threads (a server, this test runner) copies in a thread instead
        monkeypatch.setattr("imstore.packcopy.threading.active_count", lambda: 2)
        objects = clone(PathSource(packed), copy).objects
    assert pack_files(copy) == pack_files(packed)
    assert log_bytes(copy) == log_bytes(packed) and verify_ok(copy)
    assert objects == 91  # 90 in the pack, the loose one through the object stream
    with Store.open(copy) as store, Store.open(packed) as original:
        assert store.get("t/f7") == original.get("t/f7") and store.get("loose") == original.get("loose")
        assert store.objects.locate(store.resolve("loose").hash).path.parent.name != "pack"


def test_a_pack_with_a_flipped_byte_is_never_installed(packed: Path, tmp_path: Path):
    name, size, index, data = the_copy(packed)
    checked = check_index(name, size, index)
    entry = checked.entries[40]
    flipped = bytearray(data)
    flipped[entry[1] + 3] ^= 0x01
    target = tmp_path / "packs"
    target.mkdir()
    pieces = [bytes(flipped[start : start + 4096]) for start in range(0, len(flipped), 4096)]
    with pytest.raises(BadUpstream, match=f"object {entry[0].hex()}"):
        receive_pack(target, checked, pieces)
    assert list(target.iterdir()) == []  # neither the pack nor a temp file is left
    for wrong in (data[:-1], data + b"x", data[:-32] + b"\0" * 32):  # cut short, too long, another trailer
        with pytest.raises(BadUpstream):
            receive_pack(target, checked, [wrong])
        assert list(target.iterdir()) == []
    receive_pack(target, checked, [data])  # the true bytes go in
    assert PackIndex(target / f"{name}.idx").count == 90 and (target / f"{name}.pack").read_bytes() == data


def test_an_index_that_does_not_check_out_is_refused(packed: Path):
    name, size, index, _data = the_copy(packed)
    other_name = "pack-" + "0" * 40
    bad_trailer = index[:-1] + bytes([index[-1] ^ 1])
    with pytest.raises(BadUpstream, match="not a pack's name"):
        check_index("../config", size, index)
    with pytest.raises(BadUpstream, match="does not match the pack's name"):
        check_index(other_name, size, index)
    with pytest.raises(BadUpstream, match="does not match the pack's name or size"):
        check_index(name, size + 1, index)
    with pytest.raises(BadUpstream, match="checksum"):
        check_index(name, size, bad_trailer)
    with pytest.raises(BadUpstream, match="too short|bad header"):
        check_index(name, size, index[:40])


def tampered(data: bytes) -> bytes:
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x10
    return bytes(flipped)


class TamperedPacks(PathSource):
    """A path source whose packs lie (a flipped byte in one object); its object stream tells the truth."""

    def pack_file(self, file_name: str):
        data = b"".join(super().pack_file(file_name))
        return iter([tampered(data) if file_name.endswith(".pack") else data])


def test_a_pack_that_fails_its_check_is_dropped_and_its_objects_come_one_by_one(packed: Path, tmp_path: Path):
    copy = tmp_path / "copy"
    lie = tampered(the_copy(packed)[3])
    result = clone(TamperedPacks(packed), copy)
    assert log_bytes(copy) == log_bytes(packed) and verify_ok(copy)
    assert result.objects == 91
    assert all(path.read_bytes() != lie for path in (copy / "objects/pack").glob("*.pack"))
    assert not [path for path in (copy / "objects").rglob("*") if path.name.startswith(".tmp-")]


class SmallReusedPieces(PathSource):
    """Hands out every file in 4 KiB pieces through one reused buffer, as HttpSource does (in 1 MiB pieces)."""

    def pack_file(self, file_name: str):
        data = b"".join(super().pack_file(file_name))
        buffer = bytearray(4096)
        for start in range(0, len(data), len(buffer)):
            piece = data[start : start + len(buffer)]
            buffer[: len(piece)] = piece
            yield memoryview(buffer)[: len(piece)]


def test_pieces_in_a_reused_buffer_are_taken_whole(packed: Path, tmp_path: Path):
    copy = tmp_path / "copy"
    clone(SmallReusedPieces(packed), copy)
    assert pack_files(copy) == pack_files(packed)  # the index (bigger than one piece) and the pack came through intact
    assert verify_ok(copy)
