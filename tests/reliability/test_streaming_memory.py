"""A 256 MiB put and get through the real CLI keep peak memory flat (under 64 MiB above baseline)."""

from __future__ import annotations

import filecmp
import os
import subprocess
import sys
import tempfile

import pytest

from imstore import Store

SIZE = 256 << 20
LIMIT = 64 << 20
IMSTORE = [sys.executable, "-m", "imstore"]


# ru_maxrss of a child counts the memory of the process that spawned it (Linux carries the
# high-water mark across fork+exec), so a big pytest process would hide the child's own peak.
# A tiny wrapper spawns the command and reports its children's peak: its own few MiB are the floor.
WRAPPER = """
import os, resource, sys
pid = os.posix_spawn(sys.argv[2], sys.argv[2:], os.environ)
_, status = os.waitpid(pid, 0)
with open(sys.argv[1], "w") as out:
    out.write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def peak_rss(args: list[str], *, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, command=IMSTORE) -> int:
    """Run command + args as a grandchild under WRAPPER and return its peak resident set size in bytes."""
    with tempfile.NamedTemporaryFile("r", suffix=".maxrss") as report:
        result = subprocess.run(
            [sys.executable, "-S", "-c", WRAPPER, report.name, *command, *args], stdin=stdin, stdout=stdout, stderr=subprocess.PIPE
        )
        assert result.returncode == 0, result.stderr.decode()
        return int(report.read())


@pytest.mark.timeout(60)
def test_the_measurement_sees_a_process_that_holds_a_whole_object():
    """The yardstick can fail: a child holding 96 MiB at once shows up as more than the limit."""
    small = peak_rss(["-c", "import imstore.cli"], command=[sys.executable])
    holding = "import imstore.cli; data = b'x' * (96 << 20)"
    large = peak_rss(["-c", holding], command=[sys.executable])
    assert large - small > LIMIT


@pytest.fixture(scope="module")
def big_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("big") / "big.bin"
    block = os.urandom(1 << 20)
    with path.open("wb") as handle:
        for number in range(SIZE >> 20):
            handle.write(number.to_bytes(8, "big") + block[8:])  # every MiB differs
    return path


@pytest.mark.slow  # about 10 s and 1 GiB of disk traffic
@pytest.mark.timeout(300)
def test_streamed_put_and_get_of_256_mib_keep_memory_flat(store_path, big_file, tmp_path):
    store = ["--store", str(store_path)]
    small = tmp_path / "small"
    small.write_bytes(b"x")
    baseline_put = peak_rss([*store, "put", "small", str(small)])
    baseline_get = peak_rss([*store, "get", "small", "-o", str(tmp_path / "small.out")])

    put_peak = peak_rss([*store, "put", "big", str(big_file)])
    with big_file.open("rb") as source:
        stdin_peak = peak_rss([*store, "put", "big-from-stdin"], stdin=source)
    out = tmp_path / "out.bin"
    get_file_peak = peak_rss([*store, "get", "big", "-o", str(out)])
    reader = subprocess.Popen(["sha256sum"], stdin=subprocess.PIPE, stdout=subprocess.PIPE) if _has("sha256sum") else None
    get_pipe_peak = peak_rss([*store, "get", "big"], stdout=reader.stdin if reader else subprocess.DEVNULL)
    if reader:
        reader.stdin.close()
        piped_digest = reader.stdout.read().split()[0].decode()
        reader.wait(timeout=60)

    growth = {
        "put FILE": put_peak - baseline_put,
        "put <stdin": stdin_peak - baseline_put,
        "get -o": get_file_peak - baseline_get,
        "get | pipe": get_pipe_peak - baseline_get,
    }
    print({name: f"{value / 2**20:.1f} MiB" for name, value in growth.items()})
    assert all(value < LIMIT for value in growth.values()), growth
    assert out.stat().st_size == SIZE and filecmp.cmp(out, big_file, shallow=False)
    if reader:
        import hashlib

        assert piped_digest == hashlib.sha256(big_file.read_bytes()).hexdigest()
    with Store.open(store_path) as opened:
        assert opened.resolve("big").size == SIZE and opened.resolve("big").hash == opened.resolve("big-from-stdin").hash


def _has(program: str) -> bool:
    import shutil

    return shutil.which(program) is not None

