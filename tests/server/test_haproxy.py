"""deploy/haproxy.cfg with a real haproxy in front of a primary (sync mode) and its standby.

Writes go to the node whose /healthz/writable answers, reads round-robin over the readable
ones; when the primary is killed, writes stop (503 with Retry-After) and every acknowledged
write is still read, with its bytes, from the standby: the seed's failure scenario.
"""

from __future__ import annotations

import csv
import http.client
import io
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from imstore.server.auth import TokenStore
from tests.server.conftest import free_port, key_url
from tests.server.test_standby import poll, standby_of  # noqa: F401 -- standby_of is a fixture

CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "haproxy.cfg"

pytestmark = pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is not installed (apt-get install -y haproxy)")


STATS_PORTS: dict[int, int] = {}  # the balancer's port -> the port of its stats page (the tests' own frontend)


@pytest.fixture
def haproxy(tmp_path: Path):
    """haproxy(node1_port, node2_port) -> the balancer's port; stopped at the end.

    A second config file adds a stats page (for the tests only: haproxy starts every checked
    server UP, so a test waits there until the checks have found which node is which)."""
    started: list[subprocess.Popen] = []

    def launch(*ports: int) -> int:
        port, stats = free_port(), free_port()
        env = {**os.environ, "IMSTORE_LB_BIND": f"127.0.0.1:{port}",
               **{f"IMSTORE_NODE{number}": f"127.0.0.1:{node}" for number, node in enumerate(ports, 1)}}  # fmt: skip
        extra = tmp_path / f"stats-{stats}.cfg"
        extra.write_text(f"frontend stats\n    bind 127.0.0.1:{stats}\n    stats enable\n    stats uri /stats\n")
        log = open(tmp_path / "haproxy.log", "ab")
        started.append(subprocess.Popen(["haproxy", "-db", "-f", str(CONFIG), "-f", str(extra)], env=env, stdout=log, stderr=log))
        log.close()
        STATS_PORTS[port] = stats
        return port

    yield launch
    for process in started:
        process.kill()
        process.wait()


def server_states(port: int) -> dict[tuple[str, str], str]:
    """(backend, server) -> UP / DOWN / ... as the balancer at port sees them now (its stats page, CSV)."""
    status, _headers, body = through(STATS_PORTS[port], "GET", "/stats;csv", "")
    if status != 200:
        return {}
    rows = list(csv.reader(io.StringIO(body.decode().lstrip("# "))))
    columns = rows[0]
    return {(row[0], row[1]): row[columns.index("status")].split(" ")[0] for row in rows[1:] if len(row) == len(columns)}


def wait_for_writes_to(port: int, node: str) -> None:
    """Until the balancer sends writes to node alone (the other node's checks have failed)."""
    other = "node2" if node == "node1" else "node1"
    poll(lambda: (states := server_states(port)).get(("imstore_writes", node)) == "UP"
         and states.get(("imstore_writes", other)) != "UP", f"haproxy sends writes to {node} alone")  # fmt: skip


def through(port: int, method: str, path: str, token: str, body: bytes | None = None) -> tuple[int, dict, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(method, path, body=body, headers={"Authorization": f"Bearer {token}"})
        response = connection.getresponse()
        return response.status, {name.lower(): value for name, value in response.headers.items()}, response.read()
    except (ConnectionError, http.client.HTTPException) as exc:
        return 0, {}, str(exc).encode()
    finally:
        connection.close()


def test_writes_reach_the_primary_reads_spread_and_a_dead_primary_loses_no_acknowledged_write(start, standby_of, haproxy):  # noqa: F811
    primary = start("--workers", "2", "--sync-standbys", "1", "--sync-timeout", "10")
    standby = standby_of(primary, token=TokenStore(primary.store).create("standby", "replicate"))
    balancer = haproxy(primary.port, standby.port)
    write, read = primary.write_token, primary.read_token
    wait_for_writes_to(balancer, "node1")
    poll(lambda: through(balancer, "PUT", key_url("probe"), write, b"p")[0] == 201, "haproxy finds the writable node")
    acknowledged: dict[str, bytes] = {}
    for number in range(40):
        body = os.urandom(200 + number)
        status, _headers, _answer = through(balancer, "PUT", key_url(f"k{number}"), write, body)
        assert status == 201, (_headers, _answer)
        acknowledged[f"k{number}"] = body
    poll(lambda: through(balancer, "GET", "/healthz", read)[0] == 200, "reads flow")
    for key, body in acknowledged.items():
        assert through(balancer, "GET", key_url(key), read)[2] == body
    # Round-robin: both nodes answered reads (their access logs say so).
    assert "GET /v1/keys/k" in primary.log() and "GET /v1/keys/k" in standby.log()

    primary.process.kill()  # kill -9: the primary is gone
    primary.process.wait()
    refused = poll(lambda: (r := through(balancer, "PUT", key_url("after"), write, b"x"))[0] == 503 and r, "writes stop")
    assert refused[1].get("retry-after")
    for key, body in acknowledged.items():  # every acknowledged write, with its bytes, from the standby: 0 lost
        status, _headers, answer = poll(lambda key=key: (r := through(balancer, "GET", key_url(key), read))[0] == 200 and r,
                                        f"{key} is read from the standby")  # fmt: skip
        assert answer == body
