"""F5: a damaged object file is never served: get fails (exit 5) and verify names exactly the damaged objects."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from imstore import Store
from imstore.errors import CorruptObject, IntegrityError
from tests.conftest import run_cli_process

SMALL = {f"small{i}": random.Random(i).randbytes(1000 + i) for i in range(4)}
LARGE = random.Random(99).randbytes(9 << 20)  # above transfer.SMALL_OBJECT: the streamed path


def writable(path: Path) -> Path:
    os.chmod(path, 0o644)
    return path


def flip(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[len(raw) * 2 // 3] ^= 0x01
    writable(path).write_bytes(bytes(raw))


def truncate(path: Path) -> None:
    os.truncate(writable(path), path.stat().st_size - 1)


def extend(path: Path) -> None:
    with writable(path).open("ab") as handle:
        handle.write(b"\x00")


def delete(path: Path) -> None:
    path.unlink()


def swap(path: Path, other: Path) -> None:
    temp = path.with_name("swap-temp")
    os.rename(path, temp)
    os.rename(other, path)
    os.rename(temp, other)


DAMAGES = {"flip": flip, "truncate": truncate, "extend": extend, "delete": delete}


@pytest.fixture
def filled(store_path):
    with Store.open(store_path) as store:
        ids = {key: store.put(key, data).version.hash for key, data in SMALL.items()}
        ids["large"] = store.put("large", LARGE).version.hash
    return store_path, ids


def damaged_ids(report) -> set[str]:
    return {word for problem in report.problems for word in problem.replace("(", " ").split() if len(word) == 64}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("damage", DAMAGES)
@pytest.mark.parametrize("key", ["small1", "large"])
def test_a_damaged_object_is_never_served(filled, damage, key, tmp_path):
    store_path, ids = filled
    with Store.open(store_path) as store:
        DAMAGES[damage](store.objects.loose_path(ids[key]))
        with pytest.raises(IntegrityError):
            store.get(key)
        report = store.verify()
        assert not report.ok and damaged_ids(report) == {ids[key]}, report.problems
        # The undamaged keys still read correctly.
        assert all(store.get(other) == data for other, data in SMALL.items() if other != key)
    result = run_cli_process(["--store", str(store_path), "get", key])
    assert result.code == 5 and result.stdout == b"", (result.code, result.stderr)
    assert len(result.stderr.strip().splitlines()) == 1 and ids[key] in result.stderr
    out = tmp_path / "out"
    result = run_cli_process(["--store", str(store_path), "get", key, "-o", str(out)])
    assert result.code == 5 and not out.exists() and list(tmp_path.glob(".out*")) == []
    verify = run_cli_process(["--store", str(store_path), "verify"])
    assert verify.code == 5 and ids[key] in verify.stdout.decode() + verify.stderr


def test_swapped_objects_are_both_named(filled):
    store_path, ids = filled
    with Store.open(store_path) as store:
        swap(store.objects.loose_path(ids["small0"]), store.objects.loose_path(ids["small2"]))
        for key in ("small0", "small2"):
            with pytest.raises(CorruptObject):
                store.get(key)
        assert damaged_ids(store.verify()) == {ids["small0"], ids["small2"]}


def test_several_damages_are_all_named_and_nothing_else(filled):
    store_path, ids = filled
    with Store.open(store_path) as store:
        flip(store.objects.loose_path(ids["small0"]))
        delete(store.objects.loose_path(ids["small3"]))
        truncate(store.objects.loose_path(ids["large"]))
        report = store.verify()
        assert damaged_ids(report) == {ids["small0"], ids["small3"], ids["large"]}
        assert len(report.problems) == 3


def test_putting_the_good_bytes_again_repairs_a_damaged_object(filled):
    store_path, ids = filled
    with Store.open(store_path) as store:
        flip(store.objects.loose_path(ids["small1"]))
        assert store.put("repair", SMALL["small1"]).version.hash == ids["small1"]
        assert store.get("small1") == SMALL["small1"] and store.verify().ok
