"""Power loss: a fault layer that keeps only what was fsynced, checked after every fsync of a put.

A process crash keeps the page cache; power loss does not. This layer watches every
os.fsync under the store: a file's bytes become durable when the file is fsynced, a
directory's entries when the directory is fsynced. At each fsync (a possible instant
of power loss) it rebuilds the store as a disk would hold it, and the rebuilt store
must open, verify clean and hold every put acknowledged by then (ALICE's bug classes:
rename/link without a directory fsync, a record pointing at an object not yet durable).
"""

from __future__ import annotations

import os
import stat
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import imstore.objects as objects_module
from imstore import Store
from imstore.hashing import hash_bytes


@dataclass
class DurableView:
    """What survives power loss at one instant: directory entries and file contents as last fsynced."""

    entries: dict[str, dict[str, tuple[int, bool]]] = field(default_factory=dict)  # dir -> name -> (inode, is_dir)
    contents: dict[int, bytes] = field(default_factory=dict)  # inode -> bytes
    acknowledged: int = 0


class PowerLossLayer:
    def __init__(self, root: Path, real_fsync):
        self.root = str(root)
        self.real_fsync = real_fsync
        self.current = DurableView()
        self.views: list[DurableView] = []
        self.acknowledged = 0
        self.lock = threading.Lock()
        for directory, _subdirs, files in os.walk(self.root):  # the starting state is durable
            self._record_dir(directory)
            for name in files:
                path = os.path.join(directory, name)
                self.current.contents[os.lstat(path).st_ino] = Path(path).read_bytes()

    def _record_dir(self, directory: str) -> None:
        listing = {}
        for name in os.listdir(directory):
            status = os.lstat(os.path.join(directory, name))
            listing[name] = (status.st_ino, stat.S_ISDIR(status.st_mode))
        self.current.entries[directory] = listing

    def fsync(self, fd: int) -> None:
        self.real_fsync(fd)
        path = os.readlink(f"/proc/self/fd/{fd}")
        if path.startswith(self.root):
            with self.lock:  # batched writers fsync from several threads at once
                status = os.fstat(fd)
                if stat.S_ISDIR(status.st_mode):
                    self._record_dir(path)
                else:
                    self.current.contents[status.st_ino] = Path(path).read_bytes()  # fd may be write-only
                self.snapshot()

    def snapshot(self) -> None:
        self.views.append(
            DurableView({d: dict(names) for d, names in self.current.entries.items()}, dict(self.current.contents), self.acknowledged)
        )

    def materialise(self, view: DurableView, target: Path) -> Path:
        """Write the store as the disk would hold it after power loss at view (the index is lost too)."""

        def build(source: str, destination: Path) -> None:
            destination.mkdir()
            for name, (inode, is_dir) in view.entries.get(source, {}).items():
                if name.startswith("index.sqlite"):
                    continue
                if is_dir:
                    build(os.path.join(source, name), destination / name)
                else:
                    (destination / name).write_bytes(view.contents.get(inode, b""))

        build(self.root, target)
        return target


def check_views(layer: PowerLossLayer, tmp_path: Path, expected: list[tuple[str, bytes | None]], in_flight: int = 1) -> None:
    """Each view opens, verifies clean and holds its acknowledged puts (and at most those in flight)."""
    assert layer.views
    for number, view in enumerate(layer.views):
        root = layer.materialise(view, tmp_path / f"view{number}")
        with Store.open(root) as store:
            report = store.verify()
            assert report.ok, (number, report.problems)
            records = store.log_records()
            assert view.acknowledged <= len(records) <= view.acknowledged + in_flight, number
            for record, (key, data) in zip(records, expected, strict=False):
                assert record.key == key
                if data is not None:
                    assert store.get(key, version=record.version) == data


@pytest.fixture
def layer(store_path, monkeypatch):
    power = PowerLossLayer(store_path, os.fsync)
    monkeypatch.setattr(os, "fsync", power.fsync)
    return power


def test_every_acknowledged_put_survives_power_loss_at_any_fsync(store_path, layer, tmp_path):
    operations = [("a", b"first"), ("a", b"second"), ("b", b"first"), ("a", None), ("c", os.urandom(3 << 20))]
    with Store.open(store_path) as store:
        for key, data in operations:
            if data is None:
                store.delete(key)
            else:
                store.put(key, data)
            layer.acknowledged += 1
            layer.snapshot()
    check_views(layer, tmp_path, operations)
    assert layer.views[-1].acknowledged == len(operations)


def test_a_dedup_hit_on_a_name_that_was_never_made_durable(store_path, layer, tmp_path, monkeypatch):
    """A writer died after link() and before its directory fsync; the next put of the same bytes must sync it."""
    real_fsync_dir = objects_module.fsync_dir
    monkeypatch.setattr(objects_module, "fsync_dir", lambda path: None)
    with Store.open(store_path) as store:
        store.objects.write_bytes(b"same bytes")  # the object is complete, its name not durable
    monkeypatch.setattr(objects_module, "fsync_dir", real_fsync_dir)
    with Store.open(store_path) as store:
        store.put("k", b"same bytes")
        layer.acknowledged += 1
        layer.snapshot()
    check_views(layer, tmp_path, [("k", b"same bytes")])



def test_every_put_of_an_acknowledged_batch_survives_power_loss_at_any_fsync(store_path, layer, tmp_path):
    """put_many shares the fsync waits (objects written first, fsynced together, each shard dir once)."""
    with Store.open(store_path) as store:
        store.put("existing", b"dedup me")
        layer.acknowledged += 1
        layer.snapshot()
        batches = [
            # (a key's second put goes into the next frame: it is last here, so the log keeps this order)
            [("a", b"first", {}), ("b", b"dedup me", {}), ("c", os.urandom(5000), {}), ("a", b"second", {})],
            [(f"k{number}", os.urandom(100), {}) for number in range(12)],  # many shards, some new
        ]
        for batch in batches:
            answers = store.put_many(batch)
            assert all(not isinstance(answer, Exception) for answer in answers)
            layer.acknowledged += len(batch)
            layer.snapshot()
    expected = [("existing", b"dedup me")] + [(key, data) for batch in batches for key, data, _options in batch]
    check_views(layer, tmp_path, expected, in_flight=max(len(batch) for batch in batches))
    assert layer.views[-1].acknowledged == len(expected)


@pytest.mark.parametrize("how", ["put", "put_many"])
def test_an_object_in_a_shard_directory_whose_entry_was_never_made_durable(store_path, layer, tmp_path, how):
    """A writer died after mkdir() of a new shard and before fsyncing objects/: the next put into
    that shard must make the shard's own entry durable, not only the object's entry in it."""
    data = b"the first object of its shard"
    with Store.open(store_path) as store:
        shard = store.objects.loose_path(hash_bytes(data)).parent
        assert not shard.exists()
        shard.mkdir()  # what the writer that died left: a directory objects/ holds only in the page cache
        if how == "put":
            store.put("k", data)
        else:
            assert not isinstance(store.put_many([("k", data, {})])[0], Exception)
        layer.acknowledged += 1
        layer.snapshot()
    check_views(layer, tmp_path, [("k", data)])
