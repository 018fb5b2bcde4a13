"""F6: disk full, I/O errors and failing fsyncs fail the put clearly, acknowledge nothing, and leave a clean store."""

from __future__ import annotations

import errno
import io
import os
import subprocess
import sys

import pytest

from imstore import Store
from imstore.errors import ImstoreError, OutcomeUnknown, Unavailable

BIG = os.urandom((2 << 20) + 123)  # several write() calls for the object


class FailNth:
    """A fault layer for one os function: the nth call raises OSError(code); every call's file is recorded."""

    def __init__(self, real, nth: int, code: int):
        self.real, self.nth, self.code = real, nth, code
        self.calls: list[int] = []  # inode of each call's fd (or hash of its path)
        self.failed_inode: int | None = None

    def __call__(self, target, *args, **options):
        self.calls.append(os.fstat(target).st_ino if isinstance(target, int) else hash(os.fspath(target)))
        if len(self.calls) == self.nth:
            self.failed_inode = self.calls[-1]
            raise OSError(self.code, os.strerror(self.code))
        return self.real(target, *args, **options)


def state(store: Store) -> list[tuple]:
    return [(v.seq, v.key, v.version, v.hash) for v in store.log_records()]


def sweep(store_path, monkeypatch, function: str, code: int, data: bytes) -> int:
    """Fail call 1, 2, 3 ... of os.<function> during one put until the put gets through; return the count."""
    with Store.open(store_path) as store:
        store.put("k", b"old")
        store.put("other", b"x")
    for nth in range(1, 50):
        with Store.open(store_path) as store:
            before = state(store)
            layer = FailNth(getattr(os, function), nth, code)
            monkeypatch.setattr(os, function, layer)
            try:
                result = store.put_stream("k", io.BytesIO(data + bytes([nth])))
            except Unavailable as exc:
                monkeypatch.undo()
                assert os.strerror(code) in str(exc) and "\n" not in str(exc)
                if function == "fsync":
                    # A failed fsync is never retried into "durable": no later fsync of that file in this put
                    # except the one that makes the log's truncation back to the last good record stick.
                    later = layer.calls[nth:]
                    assert later.count(layer.failed_inode) <= 1
            else:
                monkeypatch.undo()
                assert result.version.version >= 2
                return nth
        with Store.open(store_path) as store:
            assert state(store) == before, f"failing call {nth} changed the store"
            assert store.get("k") == b"old"
            assert store.objects.temp_files() == []
            report = store.verify()
            assert report.ok, report.problems
    raise AssertionError("the put never got through")


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO, errno.EROFS])
def test_failing_writes_fail_the_put_and_leave_the_store_clean(store_path, monkeypatch, code):
    calls = sweep(store_path, monkeypatch, "write", code, BIG)
    assert calls >= 5  # three object chunks and the log frame were each failed once
    with Store.open(store_path) as store:
        assert store.verify().ok and store.put("k", b"later").version.version == 3


@pytest.mark.parametrize("function, code", [("open", errno.EIO), ("link", errno.ENOSPC), ("mkdir", errno.ENOSPC)])
def test_other_failing_calls_fail_the_put_and_leave_the_store_clean(store_path, monkeypatch, function, code):
    assert sweep(store_path, monkeypatch, function, code, b"content") >= 2  # at least one call was failed
    with Store.open(store_path) as store:
        assert store.verify().ok and store.put("k", b"later").version.version == 3


def test_a_failing_fsync_fails_the_put_and_is_never_retried(store_path, monkeypatch):
    calls = sweep(store_path, monkeypatch, "fsync", errno.EIO, b"small")
    assert calls >= 4  # object, shard directory, objects/ (new shard), log
    with Store.open(store_path) as store:
        assert store.verify().ok and store.put("k", b"later").version.version == 3


def test_a_failed_log_fsync_is_reported_even_if_the_truncate_fails_too(store_path, monkeypatch):
    """Nothing is acknowledged; the frame may survive (unacknowledged, at most once) and the store stays clean."""
    with Store.open(store_path) as store:
        store.put("k", b"old")
        log_inode = os.stat(store.log.path).st_ino
        real_fsync = os.fsync

        def fsync(fd):
            if os.fstat(fd).st_ino == log_inode:
                raise OSError(errno.EIO, os.strerror(errno.EIO))
            return real_fsync(fd)

        def ftruncate(fd, length):
            raise OSError(errno.EIO, os.strerror(errno.EIO))

        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(os, "ftruncate", ftruncate)
        # HARDENING D3: a write that may have happened never says "failed": exit 6 / 503, "may have been committed"
        with pytest.raises(OutcomeUnknown, match="may have been committed"):
            store.put("k", b"new")
        assert (OutcomeUnknown.exit_code, OutcomeUnknown.http_status) == (6, 503)
        monkeypatch.undo()
    with Store.open(store_path) as store:
        assert [v.version for v in store.history("k")] in ([1], [1, 2])
        assert store.verify().ok
        assert store.put("k", b"later").version.version == len(store.history("k"))


RLIMIT_SCRIPT = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
from imstore.cli import main
main(sys.argv[1:])
"""


@pytest.mark.timeout(60)
def test_rlimit_fsize_fails_the_put_with_efbig_in_a_real_process(store_path, tmp_path):
    with Store.open(store_path) as store:
        store.put("k", b"old")
        before = state(store)
    source = tmp_path / "big"
    source.write_bytes(BIG)
    result = subprocess.run(
        [sys.executable, "-c", RLIMIT_SCRIPT, "--store", str(store_path), "put", "k", str(source)],
        capture_output=True,
        timeout=60,
    )
    stderr = result.stderr.decode()
    assert result.returncode == Unavailable.exit_code, stderr
    assert os.strerror(errno.EFBIG) in stderr and len(stderr.strip().splitlines()) == 1
    assert result.stdout == b""
    with Store.open(store_path) as store:
        assert state(store) == before and store.objects.temp_files() == []
        assert store.verify().ok
        assert store.put("k", BIG).version.version == 2


def test_errors_carry_their_exit_code(store_path, monkeypatch):
    with Store.open(store_path) as store:
        monkeypatch.setattr(os, "write", FailNth(os.write, 1, errno.ENOSPC))
        with pytest.raises(ImstoreError) as caught:
            store.put("k", b"data")
    assert caught.value.exit_code == 6
