"""S3 multipart state on disk (s3/multipart.py), without a server: parts in place, parts not fsynced, Complete."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time

import pytest

pytest.importorskip("aiohttp", reason="the server needs aiohttp")
from imstore import Store  # noqa: E402
from imstore.hashing import blake3  # noqa: E402
from imstore.server.s3 import multipart  # noqa: E402
from imstore.server.s3.multipart import MIN_PART_SIZE, OBJECT, Uploads  # noqa: E402
from imstore.server.s3.prefixhash import HashedPrefix  # noqa: E402
from imstore.server.s3.xml import S3Error  # noqa: E402

STRIDE = MIN_PART_SIZE


@pytest.fixture
def store(tmp_path):
    with Store.init(tmp_path / "store")[0] as opened:
        yield opened


def start(uploads: Uploads):
    return uploads.get(uploads.create("bucket", "key", None, {}), "bucket", "key")


def send(uploads: Uploads, upload, number: int, data: bytes, declared: bool = True):
    part = uploads.write_part(upload, number, [data[:1000], data[1000:]], hashlib.md5(data), len(data) if declared else None)
    return (number, f'"{part.etag}"')


def complete(store: Store, uploads: Uploads, upload, wanted, hashed: list | None = None) -> tuple[str, bool]:
    """As Complete does it, once the parts that landed in place are hashed; hashed gets the prefix used, if any."""
    assert uploads.prefixes.wait_idle(30)
    with uploads.exclusive(upload):
        assembly = uploads.assemble(upload, wanted)
        prefix = uploads.hashed_prefix(upload, assembly)
        if hashed is not None:
            hashed.append(prefix)
        object_id, _size = store.write_spans(assembly.spans, adopt=assembly.adopt, prefix=prefix)
        uploads.finish(upload, assembly.etag, 1)
    return object_id, assembly.adopt


def test_parts_of_one_size_are_written_in_place_and_complete_adopts_the_file_without_copying(store):
    uploads = Uploads(store.root)
    upload = start(uploads)
    contents = [os.urandom(STRIDE), os.urandom(STRIDE), b"the last part"]
    wanted = [send(uploads, upload, number, data) for number, data in reversed(list(enumerate(contents, 1)))][::-1]
    parts = {part.number: part for part in uploads.parts(upload)}
    assert parts[1].at == 0 and parts[2].at == STRIDE and parts[3].at is None  # the last one, smaller, on its own
    assert not list((uploads.root / upload.upload_id).glob("1-*.part"))
    object_id, adopted = complete(store, uploads, upload, wanted)
    assert adopted
    assert store.cat(object_id) == b"".join(contents)
    assert sorted(os.listdir(uploads.root / upload.upload_id)) == ["completed.json", "upload.json"]


def test_complete_hashes_only_what_was_not_hashed_while_the_parts_arrived(store):
    uploads = Uploads(store.root)
    upload = start(uploads)
    contents = [os.urandom(STRIDE) for _ in range(3)] + [b"the last part, on its own"]
    wanted = [send(uploads, upload, number, data) for number, data in enumerate(contents, 1)]
    hashed: list = []
    object_id, adopted = complete(store, uploads, upload, wanted, hashed)
    assert adopted and hashed[0] is not None and hashed[0].length == 3 * STRIDE  # the three parts in place
    assert object_id == blake3(b"".join(contents)).hexdigest()
    assert store.cat(object_id) == b"".join(contents)
    assert not uploads.prefixes.uploads  # no longer followed: its file is closed


def test_adopt_continues_a_prefix_of_the_same_file_only(store, tmp_path):
    data = os.urandom(3 * STRIDE)
    path = tmp_path / "object"
    path.write_bytes(data)
    stat = os.stat(path)
    wrong = blake3(max_threads=blake3.AUTO)
    wrong.update(b"x" * STRIDE)  # a hasher fed other bytes: the answer shows whether adopt used it
    elsewhere = HashedPrefix(wrong.copy(), STRIDE, (stat.st_dev, stat.st_ino + 1))
    assert store.objects.adopt(path, elsewhere)[0] == blake3(data).hexdigest()  # another file's: ignored
    (tmp_path / "second").write_bytes(data)
    same = HashedPrefix(wrong, STRIDE, (os.stat(tmp_path / "second").st_dev, os.stat(tmp_path / "second").st_ino))
    assert store.objects.adopt(tmp_path / "second", same)[0] == blake3(b"x" * STRIDE + data[STRIDE:]).hexdigest()


def test_a_hashed_prefix_is_not_used_past_a_part_copied_into_place_or_past_the_end(store):
    uploads = Uploads(store.root)
    upload = start(uploads)
    contents = [os.urandom(STRIDE) for _ in range(3)]
    wanted = [send(uploads, upload, number, data) for number, data in enumerate(contents, 1)]
    assert uploads.prefixes.wait_idle(30)
    contents[1] = os.urandom(STRIDE)
    wanted[1] = send(uploads, upload, 2, contents[1])  # sent again: on its own, copied over the hashed bytes
    hashed: list = []
    object_id, adopted = complete(store, uploads, upload, wanted, hashed)
    assert adopted and hashed == [None]
    assert store.cat(object_id) == b"".join(contents)

    shorter = start(uploads)
    wanted = [send(uploads, shorter, number, data) for number, data in enumerate(contents, 1)]
    hashed = []
    object_id, adopted = complete(store, uploads, shorter, wanted[:2], hashed)  # the third part is not the object's
    assert adopted and hashed == [None]
    assert store.cat(object_id) == b"".join(contents[:2])


def test_an_aborted_upload_is_no_longer_followed(store):
    uploads = Uploads(store.root)
    upload = start(uploads)
    send(uploads, upload, 1, os.urandom(STRIDE))
    assert uploads.prefixes.wait_idle(30) and upload.upload_id in uploads.prefixes.uploads
    uploads.remove(upload.upload_id)
    assert not uploads.prefixes.uploads


def test_a_part_sent_again_goes_to_its_own_file_and_is_copied_into_place(store):
    uploads = Uploads(store.root)
    upload = start(uploads)
    first, second, again = os.urandom(STRIDE), os.urandom(STRIDE), os.urandom(STRIDE)
    send(uploads, upload, 1, first)
    send(uploads, upload, 2, second)
    wanted = [(1, hashlib.md5(first).hexdigest()), send(uploads, upload, 2, again), send(uploads, upload, 3, b"end")]
    assert (uploads.root / upload.upload_id / f"2-{hashlib.md5(again).hexdigest()}.part").exists()
    object_id, adopted = complete(store, uploads, upload, wanted)
    assert adopted and store.cat(object_id) == first + again + b"end"


def test_a_part_sent_on_its_own_and_then_in_place_is_the_later_one(store):
    """The in-place part's record is its claim file, linked to <n>.json; that name taken, the later record replaces it."""
    uploads = Uploads(store.root)
    upload = start(uploads)
    small, first, second = b"sent first, too small to go in place", os.urandom(STRIDE), os.urandom(STRIDE)
    send(uploads, upload, 1, small)
    wanted = [send(uploads, upload, 1, first), send(uploads, upload, 2, second), send(uploads, upload, 3, b"end")]
    directory = uploads.root / upload.upload_id
    assert json.loads((directory / "1.json").read_bytes())["etag"] == hashlib.md5(first).hexdigest()
    assert os.path.samefile(directory / "2.claim", directory / "2.json")  # no file made for part 2's record
    object_id, adopted = complete(store, uploads, upload, wanted)
    assert adopted and store.cat(object_id) == first + second + b"end"


def test_parts_of_other_sizes_or_with_gaps_are_copied_into_a_new_object(store):
    uploads = Uploads(store.root)
    upload = start(uploads)
    contents = {1: os.urandom(STRIDE), 3: os.urandom(STRIDE + 9), 4: os.urandom(STRIDE)}
    wanted = [send(uploads, upload, number, data) for number, data in contents.items()]
    object_id, adopted = complete(store, uploads, upload, wanted)
    assert not adopted
    assert store.cat(object_id) == b"".join(contents.values())


@pytest.mark.parametrize("declared", [True, False], ids=["in-place", "own-file"])
@pytest.mark.parametrize("damaged", [False, True], ids=["intact", "zeroed"])
def test_a_part_from_before_a_reboot_is_checked_again_and_refused_when_its_bytes_were_lost(store, declared, damaged):
    uploads = Uploads(store.root)
    upload = start(uploads)
    data = os.urandom(STRIDE)
    wanted = [send(uploads, upload, 1, data, declared), send(uploads, upload, 2, b"last")]
    record_path = uploads.root / upload.upload_id / "1.json"
    record_path.write_text(json.dumps({**json.loads(record_path.read_text()), "boot": "an-earlier-boot"}))
    place = uploads.parts(upload)[0]
    assert (place.at is not None) == declared
    if damaged:  # what a crash may leave of pages never written back: zeros
        with open(uploads.root / upload.upload_id / (OBJECT if declared else place.file_name), "r+b") as handle:
            handle.seek(place.at or 0)
            handle.write(bytes(4096))
        with pytest.raises(S3Error) as refused:
            complete(store, uploads, upload, wanted)
        assert refused.value.code == "InvalidPart" and "upload it again" in refused.value.message
    else:
        object_id, _adopted = complete(store, uploads, upload, wanted)
        assert store.cat(object_id) == data + b"last"


def test_a_part_of_this_boot_is_trusted_without_reading_it_again(store, monkeypatch):
    uploads = Uploads(store.root)
    upload = start(uploads)
    wanted = [send(uploads, upload, 1, b"only part")]
    reads = []
    real_open = open
    monkeypatch.setattr("builtins.open", lambda path, *a, **k: reads.append(str(path)) or real_open(path, *a, **k))
    with uploads.exclusive(upload):
        uploads.assemble(upload, wanted)
    assert not [path for path in reads if path.endswith(".part")]
    assert multipart.BOOT_ID is None or json.loads((uploads.root / upload.upload_id / "1.json").read_text())["boot"] == multipart.BOOT_ID


def _waiting_on_a_lock(path) -> bool:
    inode = os.stat(path).st_ino
    with open("/proc/locks") as locks:
        return any("->" in line and f":{inode} " in line for line in locks)


@pytest.mark.skipif(not os.path.exists("/proc/locks"), reason="needs Linux's /proc/locks to see a writer waiting")
def test_a_part_written_while_complete_runs_never_reaches_the_stored_object(store):
    uploads = Uploads(store.root)
    upload = start(uploads)
    first = os.urandom(STRIDE)
    wanted = [send(uploads, upload, 1, first), send(uploads, upload, 2, b"tail")]
    object_path = uploads.root / upload.upload_id / OBJECT
    outcome = []

    def late_writer():
        try:
            send(uploads, upload, 3, os.urandom(STRIDE))
            outcome.append("written")
        except S3Error as exc:
            outcome.append(exc.code)

    with uploads.exclusive(upload):
        writer = threading.Thread(target=late_writer)
        writer.start()
        deadline = time.monotonic() + 10
        while not _waiting_on_a_lock(object_path) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _waiting_on_a_lock(object_path), "the part's writer should wait for Complete"
        spans, adopt, etag, _sizes, _untouched = uploads.assemble(upload, wanted)
        object_id, _size = store.write_spans(spans, adopt=adopt)
        uploads.finish(upload, etag, 1)
    writer.join(10)
    assert outcome == ["NoSuchUpload"]
    assert store.cat(object_id) == first + b"tail"
    with pytest.raises(S3Error, match="does not exist"):
        send(uploads, upload, 4, os.urandom(STRIDE))


def age(directory, seconds: float) -> None:
    """Make an upload look untouched for `seconds`: every file's and the directory's mtime set back."""
    then = time.time() - seconds
    for path in [*directory.iterdir(), directory]:
        os.utime(path, (then, then))


def test_uploads_nothing_touched_for_longer_than_the_expiry_are_removed_and_the_others_kept(store):
    uploads = Uploads(store.root)
    old, recent, touched = start(uploads), start(uploads), start(uploads)
    send(uploads, old, 1, b"abandoned")
    send(uploads, touched, 1, b"first part")
    for upload in (old, touched):
        age(uploads.root / upload.upload_id, 8 * 86400)
    send(uploads, touched, 2, b"a part today")  # one new file is enough to keep it
    assert uploads.expire(7 * 86400) == 1
    assert sorted(path.name for path in uploads.root.iterdir()) == sorted(u.upload_id for u in (recent, touched))
    assert uploads.expire(7 * 86400, now=time.time() + 8 * 86400) == 2  # the clock moved on: the rest go too
    assert not list(uploads.root.iterdir())


def test_the_expiry_comes_from_serve_days_and_zero_keeps_uploads(monkeypatch):
    monkeypatch.setenv(multipart.EXPIRY_ENV, "1.5")
    assert multipart.expiry_from_env() == 1.5 * 86400
    for kept in ("0", "", "nonsense"):
        monkeypatch.setenv(multipart.EXPIRY_ENV, kept)
        assert multipart.expiry_from_env() is None
    monkeypatch.delenv(multipart.EXPIRY_ENV)
    assert multipart.expiry_from_env() is None


def test_serve_removes_expired_uploads_when_it_starts(tmp_path):
    from .conftest import free_port, start_server

    store_root = tmp_path / "store"
    Store.init(store_root)[0].close()
    uploads = Uploads(store_root)
    old, recent = start(uploads), start(uploads)
    age(uploads.root / old.upload_id, 3 * 86400)
    server = start_server(store_root, tmp_path / "serve.log", "--workers", "1", "--s3-port", str(free_port()),
                          "--s3-upload-expiry", "2")  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while (uploads.root / old.upload_id).exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not (uploads.root / old.upload_id).exists()
        assert (uploads.root / recent.upload_id / "upload.json").exists()
    finally:
        server.stop()
    assert "removed 1 S3 upload(s) untouched for 2 days" in (tmp_path / "serve.log").read_text()
