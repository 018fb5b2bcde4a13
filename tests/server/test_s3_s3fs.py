"""s3fs (the FUSE file system, Debian's s3fs; .ci/run installs it) mounting a bucket of `serve --s3-port`:
files written through the mount are versions, overwrites add versions, rm adds a delete marker, and
every version stays readable through the store. Needs /dev/fuse and the right to mount (root in CI)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest

from imstore import Store

pytest.importorskip("boto3", reason="boto3 comes with the test extras")
from .s3helpers import start_s3, stop_s3  # noqa: E402

MiB = 1 << 20


@pytest.fixture
def mounted(tmp_path):
    for name in ("s3fs", "fusermount"):
        if shutil.which(name) is None:
            pytest.skip(f"{name} is not installed (apt-get install s3fs; .ci/run installs it)")
    if not os.path.exists("/dev/fuse"):
        pytest.skip("no /dev/fuse: FUSE mounts are not possible here")
    s3 = start_s3(tmp_path)
    s3.client().create_bucket(Bucket="fuse")
    passwd = tmp_path / "passwd"
    passwd.write_text(f"{s3.write_key[0]}:{s3.write_key[1]}\n")
    passwd.chmod(0o600)
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    log = open(tmp_path / "s3fs.log", "wb")
    process = subprocess.Popen(["s3fs", "fuse", str(mountpoint), "-f", "-o", f"url={s3.endpoint}", "-o", "use_path_request_style",
                                "-o", f"passwd_file={passwd}", "-o", "endpoint=us-east-1", "-o", "dbglevel=warn"],
                               stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while not os.path.ismount(mountpoint) and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if not os.path.ismount(mountpoint):
            reason = (tmp_path / "s3fs.log").read_text(errors="replace")[-500:]
            pytest.skip(f"s3fs could not mount here (FUSE needs root or a setuid fusermount): {reason}")
        yield s3, mountpoint
    finally:
        subprocess.run(["fusermount", "-u", str(mountpoint)], capture_output=True)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
        stop_s3(s3)


def test_files_written_through_an_s3fs_mount_are_versions_and_rm_is_a_delete_marker(mounted):
    s3, mountpoint = mounted
    (mountpoint / "docs").mkdir()
    (mountpoint / "docs" / "a.txt").write_bytes(b"first")
    big = os.urandom(25 * MiB)  # past s3fs's 10 MiB parts: a multipart upload
    (mountpoint / "docs" / "big.bin").write_bytes(big)
    assert sorted(os.listdir(mountpoint / "docs")) == ["a.txt", "big.bin"]
    assert (mountpoint / "docs" / "big.bin").read_bytes() == big
    assert s3.client().get_object(Bucket="fuse", Key="docs/a.txt")["Body"].read() == b"first"
    (mountpoint / "docs" / "a.txt").write_bytes(b"second")
    assert (mountpoint / "docs" / "a.txt").read_bytes() == b"second"
    os.unlink(mountpoint / "docs" / "a.txt")
    assert os.listdir(mountpoint / "docs") == ["big.bin"]
    with Store.open(s3.server.store) as store:
        history = store.history("fuse/docs/a.txt")
        assert history[-1].deleted  # rm is a delete marker: nothing is removed
        contents = [store.get("fuse/docs/a.txt", version.version) for version in history if not version.deleted]
        assert b"first" in contents and contents[-1] == b"second"
        assert store.get("fuse/docs/big.bin") == big
