"""imstore repair --from URL: a flipped byte in a copy's log and a damaged object are healed from a running server."""

from __future__ import annotations

import json

from imstore import Store
from tests.conftest import run_cli_process
from tests.server.conftest import key_url
from tests.test_repair import flip, frame_offsets, verify
from tests.test_replica import SEGMENT, log_bytes


def test_repair_from_a_server_heals_the_log_and_an_object(start, tmp_path):
    primary = start("--workers", "1")
    for number in range(5):
        assert primary.request("PUT", key_url(f"k{number}"), f"content {number}".encode() * 300).status == 201
    copy = tmp_path / "copy"
    env = {"IMSTORE_TOKEN": primary.replicate_token}
    assert run_cli_process(["clone", primary.url, str(copy)], env=env).code == 0
    offset, end = frame_offsets(copy)[1]
    flip(copy / SEGMENT, offset + 30)
    with Store.open(copy) as store:
        object_id = store.resolve("k4").hash
        flip(store.objects.loose_path(object_id), 10)
    assert not verify(copy)["ok"]
    result = run_cli_process(["--store", str(copy), "--json", "repair", "--from", primary.url], env=env)
    assert result.code == 0, result.stderr
    document = json.loads(result.out)
    assert document["log_stretches"] == [f"{offset}-{end}"] and document["objects"] == [object_id]
    assert log_bytes(copy) == log_bytes(primary.store) and verify(copy)["ok"]
