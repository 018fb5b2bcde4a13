"""Conditional DELETE on `serve --s3-port` (If-Match, x-amz-if-match-last-modified-time, x-amz-if-match-size, and
their DeleteObjects elements): a delete marker is added only when the current version matches, atomically."""

from __future__ import annotations

import threading

import pytest

from imstore import Store
from imstore.errors import KeyNotFound

pytest.importorskip("boto3", reason="boto3 comes with the test extras")
from botocore.exceptions import ClientError  # noqa: E402

from .s3helpers import start_s3, stop_s3  # noqa: E402

BAD_TIME = "Thu, 01 Jan 2015 00:00:00 GMT"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    server = start_s3(tmp_path_factory.mktemp("s3cond"))
    server.client().create_bucket(Bucket="cond")
    yield server
    stop_s3(server)


def status(call, **kwargs) -> int:
    try:
        return call(**kwargs)["ResponseMetadata"]["HTTPStatusCode"]
    except ClientError as exc:
        return exc.response["ResponseMetadata"]["HTTPStatusCode"]


def ops(s3, key: str) -> list[str]:
    with Store.open(s3.server.store) as store:
        try:
            return [version.op for version in store.history(f"cond/{key}")]
        except KeyNotFound:
            return []


def test_a_delete_marker_is_added_only_when_time_and_size_match(s3):
    client = s3.client()
    assert status(client.delete_object, Bucket="cond", Key="never", IfMatchSize=9999) == 204  # no key: nothing to match
    assert ops(s3, "never") == []
    client.put_object(Bucket="cond", Key="k", Body=b"abc")
    mtime = client.head_object(Bucket="cond", Key="k")["LastModified"]
    assert status(client.delete_object, Bucket="cond", Key="k", IfMatchSize=9999) == 412
    assert status(client.delete_object, Bucket="cond", Key="k", IfMatchLastModifiedTime=BAD_TIME) == 412
    assert ops(s3, "k") == ["put"]
    deleted = client.delete_object(Bucket="cond", Key="k", IfMatchLastModifiedTime=mtime, IfMatchSize=3)
    assert deleted["DeleteMarker"] is True and deleted["VersionId"] == "2"
    # The current version is now the marker: conditions are decided against it, `*` asks for nothing to be added.
    for condition in ({"IfMatchSize": 3}, {"IfMatchLastModifiedTime": mtime}, {"IfMatch": '"' + "0" * 32 + '"'}):
        assert status(client.delete_object, Bucket="cond", Key="k", **condition) == 412
    assert status(client.delete_object, Bucket="cond", Key="k", IfMatch="*") == 204
    assert ops(s3, "k") == ["put", "delete"]


def test_delete_objects_entries_match_last_modified_time_as_an_http_date(s3):
    client = s3.client()
    client.put_object(Bucket="cond", Key="batch", Body=b"")
    mtime = client.head_object(Bucket="cond", Key="batch")["LastModified"]

    def delete(**entry):
        return client.delete_objects(Bucket="cond", Delete={"Objects": [{"Key": "batch", **entry}]})

    assert [error["Code"] for error in delete(LastModifiedTime=BAD_TIME)["Errors"]] == ["PreconditionFailed"]
    assert ops(s3, "batch") == ["put"]
    done = delete(LastModifiedTime=mtime, Size=0)["Deleted"][0]
    assert done["DeleteMarker"] is True and done["DeleteMarkerVersionId"] == "2"
    assert [error["Code"] for error in delete(LastModifiedTime=mtime)["Errors"]] == ["PreconditionFailed"]
    assert delete(ETag="*")["Deleted"][0]["Key"] == "batch" and ops(s3, "batch") == ["put", "delete"]


def test_a_conditional_delete_racing_puts_only_ever_deletes_the_version_it_named(s3):
    """Each marker's previous version is the one whose ETag the DELETE named: no write slips in between."""
    client, writer_client = s3.client(), s3.client()
    writer_client.put_object(Bucket="cond", Key="raced", Body=b"seed")
    named: dict[str, str] = {}  # marker version id -> the ETag the DELETE that added it named
    stop = threading.Event()

    def write() -> None:
        for n in range(60):
            if stop.is_set():
                return
            writer_client.put_object(Bucket="cond", Key="raced", Body=b"body %d" % n)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        for _ in range(60):
            try:
                etag = client.head_object(Bucket="cond", Key="raced")["ETag"]
            except ClientError:
                continue  # the current version is a marker just added
            try:
                marker = client.delete_object(Bucket="cond", Key="raced", IfMatch=etag)
            except ClientError as refused:
                assert refused.response["ResponseMetadata"]["HTTPStatusCode"] == 412
                continue
            named[marker["VersionId"]] = etag
    finally:
        stop.set()
        writer.join(60)
    with Store.open(s3.server.store) as store:
        history = store.history("cond/raced")
    by_number = {version.version: version for version in history}
    assert named, "no conditional delete succeeded"
    for marker_id, etag in named.items():
        before = by_number[int(marker_id) - 1]
        assert by_number[int(marker_id)].op == "delete" and before.op == "put"
        assert f'"{before.meta["s3-etag"]}"' == etag


class _RacingStore:
    """A Store whose key gets a new version right after a conditional DELETE read its current one."""

    def __init__(self, store: Store):
        self.store = store

    def resolve(self, key, *args, **kwargs):
        found = self.store.resolve(key, *args, **kwargs)
        self.store.put(key, b"written in between")
        return found

    def __getattr__(self, name):
        return getattr(self.store, name)


def test_a_version_written_between_the_check_and_the_marker_fails_that_entry_alone(tmp_path):
    """DeleteObjects: the store's if_version refuses the marker (412) for the raced entry; the others are deleted."""
    import asyncio

    from imstore.server.s3.extras import ObjectExtras

    Store.init(tmp_path / "store")[0].close()
    with Store.open(tmp_path / "store") as store:
        store.put("race/", b"", meta={"s3-bucket": "created"})
        store.put("race/a", b"one")
        store.put("race/b", b"two")
        racing = _RacingStore(store)

        class App:
            def store(self):
                return racing

            def _flush_warnings(self, _store):
                pass

            async def call(self, function):
                return function()

        class Request:
            headers: dict = {}

            async def read(self):
                etag = store.resolve("race/a").meta.get("s3-etag") or store.resolve("race/a").hash
                return (f'<Delete><Object><Key>a</Key><ETag>"{etag}"</ETag></Object>'
                        "<Object><Key>b</Key></Object></Delete>").encode()  # fmt: skip

        extras = ObjectExtras(type("S3", (), {"app": App()})())
        answer = asyncio.run(extras.delete_objects(Request(), "race")).body.decode()
        assert "<Key>a</Key><Code>PreconditionFailed</Code><Message>the current version changed" in answer  # matched, then raced
        assert "<Key>b</Key><DeleteMarker>true" in answer
        assert [version.op for version in store.history("race/a")] == ["put", "put"]
        assert [version.op for version in store.history("race/b")] == ["put", "delete"]
