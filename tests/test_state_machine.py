"""A hypothesis state machine: the Store against an in-memory model of keys and versions.

Rules put, delete, read every version, history, ls, reopen (dropping the index
sometimes) and crash (a writer that died mid-append or mid-object) must always
agree with the model, and verify must stay clean.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from imstore import Store
from imstore.errors import KeyDeleted, KeyNotFound, PreconditionFailed, VersionNotFound
from imstore.log import Log, encode_record, frame_bytes

KEYS = st.sampled_from(["a", "b", "dir/c", "ü", "../x"])
CONTENT = st.sampled_from([b"", b"x", b"y", b"hello", bytes(range(256))])


class StoreModel(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.directory = Path(tempfile.mkdtemp(prefix="imstore-sm-"))
        self.store = Store.init(self.directory / "store")[0]
        self.model: dict[str, list[bytes | None]] = {}  # key -> versions (None = tombstone)
        self.seq = 0

    def teardown(self):
        self.store.close()
        shutil.rmtree(self.directory, ignore_errors=True)

    def latest(self, key):
        versions = self.model.get(key, [])
        return versions[-1] if versions else None

    @rule(key=KEYS, data=CONTENT)
    def put(self, key, data):
        versions = self.model.setdefault(key, [])
        result = self.store.put(key, data)
        if versions and versions[-1] == data:
            assert result.unchanged and result.version.version == len(versions)
        else:
            versions.append(data)
            self.seq += 1
            assert not result.unchanged and (result.version.version, result.version.seq) == (len(versions), self.seq)

    @rule(key=KEYS, data=CONTENT, expected=st.integers(0, 6))
    def put_if_version(self, key, data, expected):
        versions = self.model.setdefault(key, [])
        if expected != len(versions):
            with pytest.raises(PreconditionFailed):
                self.store.put(key, data, if_version=expected)
            return
        result = self.store.put(key, data, if_version=expected)
        if not (versions and versions[-1] == data):
            versions.append(data)
            self.seq += 1
        assert result.version.version == len(versions)

    @rule(key=KEYS, data=CONTENT)
    def put_if_absent(self, key, data):
        versions = self.model.setdefault(key, [])
        if self.latest(key) is not None:
            with pytest.raises(PreconditionFailed):
                self.store.put(key, data, if_absent=True)
            return
        result = self.store.put(key, data, if_absent=True)
        versions.append(data)
        self.seq += 1
        assert result.version.version == len(versions) and not result.unchanged

    @rule(key=KEYS)
    def delete(self, key):
        versions = self.model.get(key, [])
        if not versions:
            with pytest.raises(KeyNotFound):
                self.store.delete(key)
        elif versions[-1] is None:
            with pytest.raises(KeyDeleted):
                self.store.delete(key)
        else:
            tombstone = self.store.delete(key)
            versions.append(None)
            self.seq += 1
            assert tombstone.version == len(versions) and tombstone.deleted

    @rule(key=KEYS)
    def get_latest(self, key):
        versions = self.model.get(key, [])
        if not versions:
            with pytest.raises(KeyNotFound):
                self.store.get(key)
        elif versions[-1] is None:
            with pytest.raises(KeyDeleted):
                self.store.get(key)
        else:
            assert self.store.get(key) == versions[-1]

    @rule(key=KEYS, number=st.integers(1, 8))
    def get_version(self, key, number):
        versions = self.model.get(key, [])
        if number > len(versions):
            with pytest.raises(KeyNotFound if not versions else VersionNotFound):
                self.store.get(key, version=number)
        elif versions[number - 1] is None:
            with pytest.raises(KeyDeleted):
                self.store.get(key, version=number)
        else:
            assert self.store.get(key, version=number) == versions[number - 1]

    @rule(key=KEYS)
    def history(self, key):
        versions = self.model.get(key, [])
        if not versions:
            with pytest.raises(KeyNotFound):
                self.store.history(key)
            return
        history = self.store.history(key)
        assert [v.version for v in history] == list(range(1, len(versions) + 1))
        assert [v.deleted for v in history] == [data is None for data in versions]

    @rule(drop_index=st.booleans())
    def reopen(self, drop_index):
        self.store.close()
        if drop_index:
            for path in (self.directory / "store").glob("index.sqlite*"):
                path.unlink()
        self.store = Store.open(self.directory / "store")

    @rule(cut=st.integers(1, 200), in_object=st.booleans())
    def crash(self, cut, in_object):
        """A writer died: mid-append (a torn frame at the log's end) or mid-object (a temp file left)."""
        self.store.close()
        root = self.directory / "store"
        log = Log(root / "log")
        list(log.scan())
        if in_object or log.torn_at is not None:  # torn bytes on torn bytes could spell a whole frame
            (root / "objects" / f".tmp-crashed-{cut}").write_bytes(b"x" * cut)
        else:
            frame = frame_bytes(encode_record(
                seq=self.seq + 1, time_ns=1, op="put", key="torn", version=1, hash="0" * 64, size=1,
                content_type=None, meta={}, message=None, prev=b"\x00" * 32,
            ))
            with log.path.open("ab") as handle:
                handle.write(frame[: min(cut, len(frame) - 1)])
        self.store = Store.open(root)

    @invariant()
    def ls_matches(self):
        live = sorted(key for key, versions in self.model.items() if versions and versions[-1] is not None)
        assert [v.key for v in self.store.ls()] == live

    @precondition(lambda self: self.seq % 5 == 0)
    @invariant()
    def verify_clean(self):
        report = self.store.verify()
        assert report.ok, report.problems
        assert report.records == self.seq


StoreModel.TestCase.settings = settings(
    max_examples=40, stateful_step_count=25, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
test_store_matches_the_model = StoreModel.TestCase


class SlowStoreModel(StoreModel):
    pass


SlowStoreModel.TestCase.settings = settings(
    max_examples=150, stateful_step_count=50, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
test_store_matches_the_model_long = pytest.mark.slow(SlowStoreModel.TestCase)
