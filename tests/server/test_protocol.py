"""The wire documents: built and parsed in protocol.py only, and a version survives the trip exactly."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import imstore.server
from imstore.server.protocol import put_document, put_result_from_document, version_document, version_from_document
from imstore.store import PutResult, Version

SCHEMAS = json.loads((Path(imstore.server.__file__).parent / "openapi.json").read_text())["components"]["schemas"]

VERSIONS = [
    Version("plain", 1, 1, "put", "ab" * 32, 5, 1_764_331_200_123_456_789),
    Version("typed/ü ☃", 7, 42, "put", "cd" * 32, 1 << 40, 1, "text/html; charset=utf-8", "première\tligne", {"a": "b", "é": "☃"}),
    Version("gone", 3, 99, "delete", None, 0, 1_764_331_200_000_000_001, None, "removed", {}),
    Version("empty", 1, 2, "put", "ef" * 32, 0, 0, "application/octet-stream", "", {"k": ""}),
]


@pytest.mark.parametrize("version", VERSIONS, ids=lambda v: v.key)
def test_a_version_document_parses_back_to_the_same_version(version):
    over_the_wire = json.loads(json.dumps(version_document(version), ensure_ascii=False))
    parsed = version_from_document(over_the_wire)
    assert parsed == version
    assert (parsed.time_ns, parsed.meta, parsed.deleted) == (version.time_ns, version.meta, version.deleted)


@pytest.mark.parametrize("unchanged", [False, True])
def test_a_put_document_parses_back_to_the_same_result(unchanged):
    result = PutResult(VERSIONS[1], unchanged)
    assert put_result_from_document(json.loads(json.dumps(put_document(result)))) == result


def test_the_documents_have_exactly_the_fields_the_openapi_schema_names():
    assert set(version_document(VERSIONS[0])) == set(SCHEMAS["Version"]["properties"])
    put_fields = set(SCHEMAS["PutResult"]["allOf"][1]["properties"]) | set(SCHEMAS["Version"]["properties"])
    assert set(put_document(PutResult(VERSIONS[0], False))) == put_fields


def test_the_server_does_not_load_the_cli_output_module():
    code = "import sys, imstore.server.worker, imstore.server.gateway; print('imstore.cli.output' in sys.modules)"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60).stdout.strip()
    assert loaded == "False"


def test_every_listing_serves_version_documents(shared_server):
    from imstore import Store

    from .conftest import key_url

    shared_server.request("PUT", key_url("wire/k"), body=b"one", headers={"Content-Type": "text/plain", "X-Imstore-Message": "first"})
    shared_server.request("DELETE", key_url("wire/k"))
    with Store.open(shared_server.store) as store:
        history = [version_document(v) for v in store.history("wire/k")]
    assert shared_server.request("GET", "/v1/history/wire%2Fk", token="read").json() == history
    assert shared_server.request("GET", "/v1/keys?prefix=wire%2F&all=1", token="read").json() == history[-1:]
    log = shared_server.request("GET", f"/v1/log?after={history[0]['seq'] - 1}", token="read").json()
    assert log == history
