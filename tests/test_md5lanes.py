"""Multi-buffer MD5 (S3 ETags): every way of feeding it gives hashlib's MD5, on each instruction set this CPU has."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import subprocess
import sys
import sysconfig
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imstore import md5lanes

needs_module = pytest.mark.skipif(md5lanes._md5lanes is None, reason="the compiled _md5lanes was not built (no C compiler)")
PIECE_SIZES = [0, 1, 55, 56, 63, 64, 65, 127, 128, 129, 1000, 4096, 65535, 65536, 70_000, 300_001]


def _fresh_state() -> bytearray:
    return md5lanes.LaneMD5().state


def _finish(state: bytearray) -> bytes:
    twin = md5lanes.LaneMD5()
    twin.state[:] = state
    return twin.digest()


@needs_module
@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(st.binary(max_size=700), max_size=5), min_size=1, max_size=19))  # past 16: a second pass
def test_lanes_in_one_call_match_hashlib_however_the_bytes_are_cut(streams):
    """Streams of unequal pieces, advanced together call by call (the C function alone, no thread)."""
    states = [_fresh_state() for _ in streams]
    for step in range(max(len(pieces) for pieces in streams)):
        moving = [(state, pieces[step]) for state, pieces in zip(states, streams, strict=True) if step < len(pieces)]
        md5lanes._md5lanes.update([state for state, _ in moving], [piece for _, piece in moving])
    for state, pieces in zip(states, streams, strict=True):
        assert _finish(state) == hashlib.md5(b"".join(pieces)).digest()


CHECK_EVERY_LEVEL = """
import hashlib, os, random, sys
from imstore import _md5lanes, md5lanes
assert _md5lanes.VECTOR_LEVEL == int(sys.argv[1]), _md5lanes.VECTOR_LEVEL
rng = random.Random(7)
sizes = {sizes}
for trial in range(60):
    streams = [[os.urandom(rng.choice(sizes)) for _ in range(rng.randint(1, 4))] for _ in range(rng.randint(1, 19))]
    states = [md5lanes.LaneMD5().state for _ in streams]
    for step in range(4):
        moving = [(s, p[step]) for s, p in zip(states, streams) if step < len(p)]
        _md5lanes.update([s for s, _ in moving], [p for _, p in moving])
    for state, pieces in zip(states, streams):
        twin = md5lanes.LaneMD5(); twin.state[:] = state
        assert twin.digest() == hashlib.md5(b"".join(pieces)).digest(), (trial, len(streams))
print("ok")
"""


@needs_module
def test_every_instruction_set_this_cpu_has_gives_hashlib_md5():
    """Plain C, AVX2 and AVX-512VL: IMSTORE_MD5LANES_LEVEL lowers (never raises) the level the module picks."""
    best = md5lanes._md5lanes.VECTOR_LEVEL
    script = CHECK_EVERY_LEVEL.format(sizes=PIECE_SIZES)
    for level in range(best + 1):
        env = {**os.environ, "IMSTORE_MD5LANES_LEVEL": str(level)}
        done = subprocess.run([sys.executable, "-c", script, str(level)], env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and done.stdout.strip() == "ok", (level, done.stderr[-2000:])


@needs_module
def test_streams_fed_from_many_threads_at_once_get_their_own_md5():
    """The upload path: each pool thread feeds its stream (views included), the hasher thread batches them."""
    failures: list[int] = []

    def upload(seed: int) -> None:
        rng = random.Random(seed)
        lanes, reference = md5lanes.new(), hashlib.md5()
        for _ in range(rng.randint(0, 40)):
            data = rng.randbytes(rng.choice(PIECE_SIZES))
            lanes.update(memoryview(data)[: len(data)])
            reference.update(data)
        if lanes.hexdigest() != reference.hexdigest():
            failures.append(seed)

    threads = [threading.Thread(target=upload, args=(seed,)) for seed in range(24)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads)
    assert failures == []


@needs_module
def test_digest_can_be_asked_twice_and_a_copy_goes_its_own_way():
    lanes = md5lanes.new(b"a" * 100_000)
    twin = lanes.copy()
    lanes.update(b"b" * 200_000)
    twin.update(b"c")
    assert lanes.digest() == lanes.digest() == hashlib.md5(b"a" * 100_000 + b"b" * 200_000).digest()
    assert twin.hexdigest() == hashlib.md5(b"a" * 100_000 + b"c").hexdigest()


@needs_module
def test_the_module_refuses_a_state_given_twice_or_of_the_wrong_size():
    state = _fresh_state()
    with pytest.raises(ValueError, match="twice"):
        md5lanes._md5lanes.update([state, state], [b"x" * 64, b"y" * 64])
    with pytest.raises(ValueError, match="bytes"):
        md5lanes._md5lanes.update([bytearray(10)], [b"x"])
    with pytest.raises(ValueError, match="one buffer per state"):
        md5lanes._md5lanes.update([state], [])


@needs_module
def test_a_failure_in_the_hasher_thread_is_raised_by_digest_not_hidden():
    lanes = md5lanes.new()
    lanes.state[24:28] = (200).to_bytes(4, "little")  # a damaged tail length: the module refuses the state
    lanes.update(b"x" * (md5lanes.INLINE_LIMIT * 2))  # large: queued for the hasher thread
    with pytest.raises(ValueError, match="damaged"):
        lanes.digest()


def test_turned_off_it_is_hashlib():
    script = "from imstore import md5lanes; import hashlib; h = md5lanes.new(b'abc'); print(type(h).__name__, h.hexdigest())"
    done = subprocess.run([sys.executable, "-c", script], env={**os.environ, "IMSTORE_MD5LANES": "0"}, capture_output=True, text=True)
    assert done.stdout.split() == [type(hashlib.md5()).__name__, hashlib.md5(b"abc").hexdigest()]


def test_the_module_is_built_wherever_a_c_compiler_is():
    """A missing build would silently cost S3 uploads their fast MD5: where it could be built, it must be."""
    headers = Path(sysconfig.get_paths()["include"]) / "Python.h"
    if not (shutil.which("cc") or shutil.which("gcc")) or not headers.exists():
        pytest.skip("no C compiler or no Python headers here: the hashlib fallback is the expected state")
    assert md5lanes.compiled() or os.environ.get("IMSTORE_MD5LANES") == "0"
