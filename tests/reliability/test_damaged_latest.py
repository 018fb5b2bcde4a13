"""H2: a key whose newest versions were in a damaged log frame never reads as "the latest" without a word.

The intact version is still served (damage costs what is damaged), but the CLI warns on stderr, the
HTTP answer carries X-Imstore-Damaged: 1, not-found answers say the key may have been lost there, and
verify is exit 5. Keys whose newest version lies after the damage read with no caveat.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from imstore import Store
from imstore.errors import KeyNotFound, VersionNotFound
from tests.conftest import run_cli_in_process

LOG = "log/00000000000000000000.log"
CAVEAT = "a newer version may have been lost there"


def damaged_store(store_path: Path) -> int:
    """k v1, gone v1, k v2, after v1 (one frame each); the frames of `gone` and of k's v2 are damaged,
    then the index is rebuilt around them. Returns the first damaged offset."""
    with Store.open(store_path) as store:
        for key, data in [("k", b"k one"), ("gone", b"only version"), ("k", b"k two"), ("after", b"after the damage")]:
            store.put(key, data)
        frames = [(frame.offset, frame.end) for frame in store.log.scan()]
    raw = bytearray((store_path / LOG).read_bytes())
    for offset, end in frames[1:3]:
        raw[(offset + end) // 2] ^= 0x10  # mid-payload: the checksum fails
    (store_path / LOG).write_bytes(bytes(raw))
    for path in store_path.glob("index.sqlite*"):
        path.unlink()
    return frames[1][0]


def test_the_last_intact_version_is_served_with_a_caveat(store_path):
    first_damage = damaged_store(store_path)
    with Store.open(store_path) as store:
        assert store.get("k") == b"k one"
        assert store.read_caveat is not None and CAVEAT in store.read_caveat and f"offset(s) {first_damage}" in store.read_caveat
        assert store.read_caveat in store.warnings  # the CLI prints these on stderr
        store.warnings.clear()
        assert store.get("after") == b"after the damage"  # its newest version lies after the damage: no caveat
        assert store.read_caveat is None and not store.warnings
        assert store.get("k", version=1) == b"k one" and store.read_caveat is None  # a numbered version is exact
        with pytest.raises(VersionNotFound, match=CAVEAT):
            store.get("k", version=2)
        with pytest.raises(KeyNotFound, match=CAVEAT):
            store.get("gone")


def test_a_store_without_damage_reads_with_no_caveat(store_path):
    with Store.open(store_path) as store:
        store.put("k", b"one")
        assert store.get("k") == b"one" and store.read_caveat is None and not store.warnings
        with pytest.raises(KeyNotFound) as raised:
            store.get("missing")
        assert CAVEAT not in str(raised.value)


def test_the_cli_says_so_on_stderr_and_verify_is_exit_5(store_path):
    damaged_store(store_path)
    read = run_cli_in_process(["--store", str(store_path), "get", "k"])
    assert (read.code, read.stdout) == (0, b"k one") and CAVEAT in read.stderr, read.stderr
    clean = run_cli_in_process(["--store", str(store_path), "get", "after"])
    assert clean.code == 0 and clean.stderr == ""
    missing = run_cli_in_process(["--store", str(store_path), "get", "gone"])
    assert missing.code == 3 and CAVEAT in missing.stderr
    assert run_cli_in_process(["--store", str(store_path), "verify"]).code == 5


@pytest.mark.timeout(120)
def test_http_answers_carry_x_imstore_damaged_and_the_remote_cli_warns(store_path, tmp_path):
    from tests.server.conftest import key_url, start_server

    damaged_store(store_path)
    server = start_server(store_path, tmp_path / "serve.log", "--workers", "1")
    try:
        served = server.request("GET", key_url("k"), token="read")
        assert served.status == 200 and served.body == b"k one" and served.headers["X-Imstore-Damaged"] == "1"
        assert "X-Imstore-Damaged" not in server.request("GET", key_url("after"), token="read").headers
        assert "X-Imstore-Damaged" not in server.request("GET", key_url("k") + "?version=1", token="read").headers
        gone = server.request("GET", key_url("gone"), token="read")
        assert gone.status == 404 and gone.headers["X-Imstore-Damaged"] == "1" and CAVEAT in gone.json()["detail"]
        remote = run_cli_in_process(["--remote", server.url, "get", "k"], env={"IMSTORE_TOKEN": server.read_token})
        assert remote.code == 0 and remote.stdout == b"k one" and "damaged" in remote.stderr, remote.stderr
    finally:
        server.process.kill()
        server.process.wait()
