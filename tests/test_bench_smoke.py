"""Each benchmark script runs end to end at tiny sizes, so the scripts cannot rot.

No timing is asserted here (timings belong in bench/RESULTS.md); the check is that
each script completes, measures its anchor and prints its ratio line.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


def run_bench(script: str, *args: str) -> str:
    completed = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True, timeout=240, cwd=BENCH.parent)
    assert completed.returncode == 0, completed.stderr
    return completed.stdout


@pytest.mark.timeout(300)
@pytest.mark.parametrize("use_git", [False, pytest.param(True, id="git")])
def test_put_large_runs(use_git):
    if use_git and shutil.which("git") is None:
        pytest.skip("git is not installed")
    out = run_bench("bench_put_large.py", "--size-mib", "2", "--rounds", "1", *([] if use_git else ["--no-git"]))
    assert "imstore / (cp + sync)" in out
    assert ("git hash-object -w / imstore" in out) == use_git


@pytest.mark.timeout(300)
def test_startup_runs():
    out = run_bench("bench_startup.py", "--runs", "1")
    assert "imstore get / import typer" in out


@pytest.mark.timeout(300)
def test_scale_runs():
    out = run_bench("bench_scale.py", "--big", "300", "--small", "100", "--runs", "1")
    assert "get: big / small" in out
    assert "history --limit 20: big / small" in out


@pytest.mark.timeout(300)
def test_run_all_help():
    assert "--quick" in run_bench("run_all.py", "--help")


@pytest.mark.timeout(120)
def test_fsync_patterns_runs():
    out = run_bench("bench_fsync_patterns.py", "--batch", "2", "--rounds", "2", "--repeats", "1")
    assert "parallel / sequential =" in out and "one file" in out


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_soak_runs():
    """30 s of load on a real serve with one worker stopped and one killed: nothing lost or wrong (exit 0)."""
    summary = json.loads(run_bench("bench_soak.py", "--minutes", "0.5", "--clients", "4", "--json"))
    assert summary["lost"] == 0 and summary["wrong"] == 0
    (minute,) = summary["per_minute"]
    assert minute["completed"] > 0
    assert any(fault.startswith("STOP w") for fault in minute["faults"])
    assert any(fault.startswith("KILL w") and "back" in fault for fault in minute["faults"])
    assert summary["verify_clean"]


@pytest.mark.timeout(300)
def test_proofs_runs():
    out = run_bench("bench_proofs.py", "--sizes", "100", "2000", "--rounds", "5", "--records", "300", "--runs", "1", "--puts", "5",
                    "--put-rounds", "1")  # fmt: skip
    assert "prove inclusion at 2,000" in out
    assert "prove / get" in out and "with / without the tree" in out


def test_clone_runs():
    if shutil.which("rsync") is None:
        pytest.skip("rsync is not installed (the anchor of bench_clone.py)")
    out = run_bench("bench_clone.py", "--objects", "100", "--size-kib", "2", "--rounds", "1")
    assert "imstore clone URL / (rsync + sync)" in out and "imstore clone path / (rsync + sync)" in out


@pytest.mark.timeout(300)
def test_replication_runs():
    out = run_bench("bench_replication.py", "--rate", "20", "--seconds", "1", "--clients", "2", "--put-seconds", "1")
    assert "p99" in out and "sync / async =" in out


def test_batch_runs():
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    out = run_bench("bench_batch.py", "--count", "40", "--sample", "3", "--rounds", "1", "--remote")
    assert "one process each / get --batch" in out and "get --batch / git cat-file --batch" in out
    assert "--remote get --batch / local get --batch" in out


@pytest.mark.timeout(300)
def test_s3_ab_runs(tmp_path):
    if shutil.which("aws", path=str(Path(sys.executable).parent)) is None or shutil.which("openssl") is None:
        pytest.skip("aws-cli (test extras) and openssl are needed for the https copy")
    out = run_bench("ab_s3.py", "--mib", "2", "--rounds", "2", "--aws-config", "default=", "--aws-config",
                    "big=s3 =\\n    multipart_chunksize = 64MB")
    assert "main/default     put" in out and "main/big" in out
    assert out.count("cp/put") == 2 and "cp against main/default: 1.000" in out
    # A variant runs its own copy of imstore/, even from a checkout (where `python -m` would find the checkout's).
    shutil.copytree(BENCH.parent / "imstore", tmp_path / "copy" / "imstore", ignore=shutil.ignore_patterns("__pycache__"))
    out = run_bench("ab_s3.py", "--mib", "2", "--rounds", "1", "--variant", f"copy={tmp_path / 'copy'}")
    assert f"copy: {os.path.realpath(tmp_path / 'copy' / 'imstore')}" in out and "copy             cp/put" in out


def test_s3_bench_runs():
    pytest.importorskip("botocore", reason="bench_s3 signs its GETs with botocore (test extras)")
    out = run_bench("bench_s3.py", "--seconds", "1", "--big-mib", "2", "--rounds", "1", "--connections", "4")
    assert "4 KiB GET" in out and ("MiB" in out or "large copy: skipped" in out)
    if shutil.which("wrk"):
        assert "ratio" in out.split("4 KiB GET", 1)[1].splitlines()[0]
