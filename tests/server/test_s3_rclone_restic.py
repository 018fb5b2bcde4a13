"""rclone and restic (Debian packages; .ci/run installs them) against `serve --s3-port`: their deletes
become delete markers and every version stays readable through the store."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from imstore import Store

pytest.importorskip("boto3", reason="boto3 comes with the test extras")
from .s3helpers import start_s3, stop_s3  # noqa: E402
from .test_http import self_signed_certificate  # noqa: E402


@pytest.fixture(scope="module", params=["http", "https"])
def s3(request, tmp_path_factory):
    """The server over plain http, then over https with a self-signed certificate (the clients are told to trust it)."""
    root = tmp_path_factory.mktemp(f"s3tools-{request.param}")
    tls = self_signed_certificate(root, "-addext", "subjectAltName=IP:127.0.0.1") if request.param == "https" else None
    server = start_s3(root, tls=tls)
    yield server
    stop_s3(server)


def trust(s3, option: str) -> list[str]:
    """The client's option naming the server's self-signed certificate, over https."""
    return [option, str(s3.verify)] if s3.scheme == "https" else []


def program(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (apt-get install {name}; .ci/run installs it)")
    return found


def run(command: list[str], env: dict, cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess:
    # AWS_CA_BUNDLE (set on some machines) makes rclone's S3 backend refuse its own transport: not ours to use here.
    inherited = {name: value for name, value in os.environ.items() if not name.startswith("AWS_")}
    result = subprocess.run(command, env={**inherited, **env}, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{command[:3]} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result


def make_tree(root: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def test_rclone_sync_check_copy_back_and_deletions_become_tombstones(s3, tmp_path):
    rclone = [program("rclone"), *trust(s3, "--ca-cert")]
    env = {"RCLONE_CONFIG": str(tmp_path / "none.conf"), "RCLONE_CONFIG_IM_TYPE": "s3", "RCLONE_CONFIG_IM_PROVIDER": "Other",
           "RCLONE_CONFIG_IM_ACCESS_KEY_ID": s3.write_key[0], "RCLONE_CONFIG_IM_SECRET_ACCESS_KEY": s3.write_key[1],
           "RCLONE_CONFIG_IM_ENDPOINT": s3.endpoint, "RCLONE_CONFIG_IM_FORCE_PATH_STYLE": "true"}  # fmt: skip
    source = tmp_path / "source"
    files = {"a.txt": b"alpha\n", "dir/b.bin": os.urandom(300_000), "dir/sub/c.txt": b"gamma\n" * 100}
    make_tree(source, files)
    run([*rclone, "mkdir", "im:rclone"], env, tmp_path)
    run([*rclone, "sync", str(source), "im:rclone/photos"], env, tmp_path)
    run([*rclone, "check", str(source), "im:rclone/photos"], env, tmp_path)
    (source / "a.txt").unlink()
    (source / "dir/b.bin").write_bytes(b"changed")
    run([*rclone, "sync", str(source), "im:rclone/photos"], env, tmp_path)
    back = tmp_path / "back"
    run([*rclone, "copy", "im:rclone/photos", str(back)], env, tmp_path)
    assert sorted(str(p.relative_to(back)) for p in back.rglob("*") if p.is_file()) == ["dir/b.bin", "dir/sub/c.txt"]
    assert (back / "dir/b.bin").read_bytes() == b"changed"
    with Store.open(s3.server.store) as store:
        assert [v.op for v in store.history("rclone/photos/a.txt")] == ["put", "delete"]
        assert store.get("rclone/photos/a.txt", 1) == files["a.txt"]
        assert store.get("rclone/photos/dir/b.bin", 1) == files["dir/b.bin"]


def test_restic_backup_check_restore_and_forget_prune_keep_every_version(s3, tmp_path):
    restic = [program("restic"), *trust(s3, "--cacert")]
    s3.client().create_bucket(Bucket="restic")
    env = {"RESTIC_REPOSITORY": f"s3:{s3.endpoint}/restic/repo", "RESTIC_PASSWORD": "correct horse",
           "AWS_ACCESS_KEY_ID": s3.write_key[0], "AWS_SECRET_ACCESS_KEY": s3.write_key[1],
           "RESTIC_CACHE_DIR": str(tmp_path / "cache")}  # fmt: skip
    data = tmp_path / "data"
    make_tree(data, {"notes.txt": b"first\n", "blob.bin": os.urandom(2_000_000)})
    run([*restic, "init"], env, tmp_path)
    run([*restic, "backup", str(data)], env, tmp_path)
    (data / "notes.txt").write_bytes(b"second\n")
    run([*restic, "backup", str(data)], env, tmp_path)
    run([*restic, "check", "--read-data"], env, tmp_path)
    target = tmp_path / "restored"
    run([*restic, "restore", "latest", "--target", str(target)], env, tmp_path)
    restored = next(target.rglob("notes.txt"))
    assert restored.read_bytes() == b"second\n"
    with Store.open(s3.server.store) as store:
        before = {v.key: v.version for v in store.ls("restic/repo/", include_deleted=True)}
    run([*restic, "forget", "--keep-last", "1", "--prune"], env, tmp_path)
    run([*restic, "check"], env, tmp_path)
    with Store.open(s3.server.store) as store:
        deleted = [v for v in store.ls("restic/repo/", include_deleted=True) if v.deleted]
        assert any(v.key.startswith("restic/repo/snapshots/") for v in deleted)  # forget's deletes are delete markers
        for key, number in before.items():  # and every version written before stays readable
            found = store.history(key)[number - 1]
            if not found.deleted:
                assert len(store.get(key, number)) == found.size
