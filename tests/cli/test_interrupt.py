"""Ctrl-C during a put: exit 130, nothing written, no temp file left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from imstore import Store


@pytest.mark.timeout(60)
def test_sigint_during_a_streamed_put_exits_130_and_writes_nothing(store_path):
    process = subprocess.Popen(
        [sys.executable, "-m", "imstore", "--store", str(store_path), "put", "k"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    objects = store_path / "objects"
    deadline = time.monotonic() + 30
    # Feed data until the put is visibly mid-write (its temp object file exists).
    while not any(name.startswith(".tmp-") for name in os.listdir(objects)):
        assert time.monotonic() < deadline, "the put never started writing"
        process.stdin.write(b"x" * 65536)
        process.stdin.flush()
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 130, stderr
    assert [name for name in os.listdir(objects) if name.startswith(".tmp-")] == []
    with Store.open(store_path) as store:
        assert store.log_records() == [] and store.verify().ok
