"""What s3-tests checks beyond the core on `serve --s3-port`: ACLs as S3 has them disabled (the store's one owner has
FULL_CONTROL of every bucket and version; restating that changes nothing, any other ACL is refused, on a write too)
and RGW's read-stats and allow-unordered extensions."""

from __future__ import annotations

import pytest

from imstore import Store

pytest.importorskip("boto3", reason="boto3 comes with the test extras")
from botocore.exceptions import ClientError  # noqa: E402

from .s3helpers import start_s3, stop_s3  # noqa: E402

PRIVATE = [{"Grantee": {"ID": "imstore", "DisplayName": "imstore", "Type": "CanonicalUser"}, "Permission": "FULL_CONTROL"}]


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    server = start_s3(tmp_path_factory.mktemp("s3compat"))
    server.client().create_bucket(Bucket="acls")
    yield server
    stop_s3(server)


def code(call, **kwargs) -> str:
    with pytest.raises(ClientError) as refused:
        call(**kwargs)
    return refused.value.response["Error"]["Code"]


def test_object_and_bucket_acls_are_the_owners_full_control_as_listings_say(s3):
    client = s3.client()
    client.put_object(Bucket="acls", Key="k", Body=b"one")
    for answer in (client.get_object_acl(Bucket="acls", Key="k"), client.get_object_acl(Bucket="acls", Key="k", VersionId="1"),
                   client.get_bucket_acl(Bucket="acls"), s3.client("read").get_object_acl(Bucket="acls", Key="k")):  # fmt: skip
        assert answer["Grants"] == PRIVATE
        assert answer["Owner"] == client.list_objects(Bucket="acls")["Contents"][0]["Owner"] == {"ID": "imstore", "DisplayName": "imstore"}
    assert code(client.get_object_acl, Bucket="acls", Key="missing") == "NoSuchKey"
    assert code(client.get_object_acl, Bucket="acls", Key="k", VersionId="7") == "NoSuchVersion"
    assert code(client.get_bucket_acl, Bucket="no-such-bucket") == "NoSuchBucket"


def test_only_the_owners_full_control_is_accepted_and_nothing_is_written(s3):
    client = s3.client()
    client.put_object(Bucket="acls", Key="p", Body=b"x", ACL="bucket-owner-full-control")
    client.put_object_acl(Bucket="acls", Key="p", ACL="private")
    client.put_bucket_acl(Bucket="acls", ACL="private")
    owner = client.get_object_acl(Bucket="acls", Key="p")["Owner"]
    client.put_object_acl(Bucket="acls", Key="p", AccessControlPolicy={"Owner": owner, "Grants": PRIVATE})
    disabled = "AccessControlListNotSupported"
    assert code(client.put_object_acl, Bucket="acls", Key="p", ACL="public-read") == disabled
    assert code(client.put_bucket_acl, Bucket="acls", ACL="public-read-write") == disabled
    everyone = 'uri="http://acs.amazonaws.com/groups/global/AllUsers"'
    assert code(client.put_object_acl, Bucket="acls", Key="p", GrantRead=everyone) == disabled
    wider = PRIVATE + [{"Grantee": {"Type": "Group", "URI": "http://acs.amazonaws.com/groups/global/AllUsers"}, "Permission": "READ"}]
    assert code(client.put_object_acl, Bucket="acls", Key="p", AccessControlPolicy={"Owner": owner, "Grants": wider}) == disabled
    assert code(client.put_object_acl, Bucket="acls", Key="missing", ACL="private") == "NoSuchKey"
    assert code(s3.client("read").put_object_acl, Bucket="acls", Key="p", ACL="private") == "AccessDenied"
    # A write that asks for a wider ACL is refused rather than written and then not shared as asked.
    assert code(client.put_object, Bucket="acls", Key="p", Body=b"y", ACL="public-read") == disabled
    assert code(client.copy_object, Bucket="acls", Key="q", CopySource="acls/p", ACL="authenticated-read") == disabled
    assert code(client.create_multipart_upload, Bucket="acls", Key="q", GrantRead='id="someone"') == disabled
    assert code(client.create_bucket, Bucket="public", ACL="public-read") == "InvalidBucketAclWithObjectOwnership"
    client.create_bucket(Bucket="owned", ACL="private")
    assert client.get_object_acl(Bucket="acls", Key="p")["Grants"] == PRIVATE
    with Store.open(s3.server.store) as store:
        assert [version.op for version in store.history("acls/p")] == ["put"]
        assert store.ls("acls/q") == [] and store.ls("public/") == [] and len(store.ls("owned/")) == 1


def test_head_bucket_read_stats_counts_the_current_objects_and_their_bytes(s3):
    client = s3.client()
    client.create_bucket(Bucket="stats")

    def stats(**kwargs) -> tuple[str | None, str | None]:
        headers = client.head_bucket(Bucket="stats", **kwargs)["ResponseMetadata"]["HTTPHeaders"]
        return headers.get("x-rgw-object-count"), headers.get("x-rgw-bytes-used")

    client.meta.events.register("request-created.s3.HeadBucket", lambda request, **_: request.params.update({"read-stats": "true"}))
    assert stats() == ("0", "0")
    for key, body in (("a", b"123"), ("b", b"45"), ("a", b"6789"), ("gone", b"x" * 10), ("dir/c", b"")):
        client.put_object(Bucket="stats", Key=key, Body=body)
    client.delete_object(Bucket="stats", Key="gone")
    assert stats() == ("3", "6")  # a (its latest, 4 bytes), b and dir/c; the deleted key is not an object any more
    plain = s3.client().head_bucket(Bucket="stats")["ResponseMetadata"]["HTTPHeaders"]
    assert "x-rgw-object-count" not in plain  # only when asked: it reads every key


def test_allow_unordered_listings_are_ordered_and_refuse_a_delimiter(s3):
    client = s3.client()
    client.create_bucket(Bucket="unordered")
    for key in ("b", "a", "d/x", "c"):
        client.put_object(Bucket="unordered", Key=key, Body=b"")
    unordered = lambda params, **_: params.update(url=params["url"] + "&allow-unordered=true")  # noqa: E731
    client.meta.events.register("before-call.s3.ListObjects", unordered)
    first = client.list_objects(Bucket="unordered", MaxKeys=2)
    rest = client.list_objects(Bucket="unordered", Marker=first["Contents"][-1]["Key"])
    assert [o["Key"] for o in first["Contents"] + rest["Contents"]] == ["a", "b", "c", "d/x"]
    with pytest.raises(ClientError) as refused:
        client.list_objects(Bucket="unordered", Delimiter="/")
    assert refused.value.response["Error"]["Code"] == "InvalidArgument"
