"""s3fs from PyPI (fsspec's S3 file system over aiobotocore: what pandas, dask and xarray use for `s3://`)
against `serve --s3-port`, over http and https: a bucket made with mkdir, small writes and a multipart
stream, overwrites and rm, version-aware reads of every earlier version, and the store agreeing."""

from __future__ import annotations

import os

import pytest

from imstore import Store

pytest.importorskip("boto3", reason="boto3 comes with the test extras")
s3fs = pytest.importorskip("s3fs", reason="s3fs (fsspec) comes with the test extras")
from .s3helpers import start_s3, stop_s3  # noqa: E402
from .test_http import self_signed_certificate  # noqa: E402

MiB = 1 << 20


@pytest.fixture(params=["http", "https"])
def s3(request, tmp_path):
    tls = None
    if request.param == "https":
        tls = self_signed_certificate(tmp_path, "-addext", "subjectAltName=IP:127.0.0.1")
    server = start_s3(tmp_path, tls=tls)
    yield server
    stop_s3(server)


def file_system(s3) -> s3fs.S3FileSystem:
    return s3fs.S3FileSystem(key=s3.write_key[0], secret=s3.write_key[1], endpoint_url=s3.endpoint, version_aware=True,
                             skip_instance_cache=True, client_kwargs={"region_name": "us-east-1", "verify": s3.verify},
                             config_kwargs={"s3": {"addressing_style": "path"}})  # fmt: skip


def test_fsspec_s3fs_writes_versions_reads_every_one_back_and_rm_is_a_delete_marker(s3):
    fs = file_system(s3)
    fs.mkdir("tables")
    assert "tables" in [entry.rstrip("/") for entry in fs.ls("")]
    fs.pipe("tables/2024/q1.csv", b"region,total\nnorth,1\n")
    fs.pipe("tables/2024/q1.csv", b"region,total\nnorth,2\n")
    big = os.urandom(12 * MiB)
    with fs.open("tables/2024/raw.bin", "wb", block_size=5 * MiB) as stream:  # 5 MiB parts: a multipart upload
        for start in range(0, len(big), MiB):
            stream.write(big[start : start + MiB])
    assert fs.cat("tables/2024/q1.csv") == b"region,total\nnorth,2\n"
    assert fs.cat("tables/2024/raw.bin") == big
    assert sorted(fs.ls("tables/2024", detail=False)) == ["tables/2024/q1.csv", "tables/2024/raw.bin"]

    versions = fs.object_version_info("tables/2024/q1.csv")
    assert len(versions) == 2
    old = [fs.cat("tables/2024/q1.csv", version_id=version["VersionId"]) for version in versions]
    assert sorted(old) == [b"region,total\nnorth,1\n", b"region,total\nnorth,2\n"]

    fs.rm("tables/2024/q1.csv")
    fs.invalidate_cache()
    assert not fs.exists("tables/2024/q1.csv")
    with pytest.raises(FileNotFoundError):
        fs.cat("tables/2024/q1.csv")
    with Store.open(s3.server.store) as store:
        history = store.history("tables/2024/q1.csv")
        assert [version.op for version in history] == ["put", "put", "delete"]  # rm removed nothing
        assert store.get("tables/2024/q1.csv", 1) == b"region,total\nnorth,1\n"
        assert store.get("tables/2024/raw.bin") == big


def test_fsspec_s3fs_with_a_read_key_reads_but_cannot_write(s3):
    writer = file_system(s3)
    writer.mkdir("shared")
    writer.pipe("shared/notes.txt", b"team notes")
    reader = s3fs.S3FileSystem(key=s3.read_key[0], secret=s3.read_key[1], endpoint_url=s3.endpoint, skip_instance_cache=True,
                               client_kwargs={"region_name": "us-east-1", "verify": s3.verify},
                               config_kwargs={"s3": {"addressing_style": "path"}})  # fmt: skip
    assert reader.cat("shared/notes.txt") == b"team notes"
    with pytest.raises(PermissionError):
        reader.pipe("shared/notes.txt", b"overwritten")
    with Store.open(s3.server.store) as store:
        assert [version.op for version in store.history("shared/notes.txt")] == ["put"]
