"""Run ceph/s3-tests (vendored at ../shared/vendor/s3-tests) against a fresh `imstore serve --s3-port`.

    .venv/bin/pip install -r bench/s3tests/requirements.txt
    .venv/bin/python bench/s3tests/run.py [--suite PATH] [-k EXPRESSION] [--workers N]

Prints passed / failed / by-design counts. A failure listed in by_design.txt (each with its reason:
the immutability the store promises, or a feature it does not offer) is expected; any other
failure is a bug or a gap to close. Exit 0 when every failure is by design.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT))

from imstore import Store  # noqa: E402
from imstore.server.auth import TokenStore  # noqa: E402

SUITE = ROOT.parent / "shared" / "vendor" / "s3-tests"
# The groups issue 13 names: versioning, object lock, listing, multipart, conditional writes, object read/write.
DEFAULT_SELECTION = ("versioning or versions or object_lock or list or multipart or conditional or object_read or object_write"
                     " or put_object or get_object or head_object or object_copy or copy_object or checksum or delete_object"
                     " or bucket_create or bucket_head or ranged or atomic")  # fmt: skip

CONF = """[DEFAULT]
host = 127.0.0.1
port = {port}
is_secure = False
ssl_verify = False

[fixtures]
bucket prefix = imstore-{{random}}-

[s3 main]
display_name = main
user_id = imstore
email = main@example.com
api_name = default
access_key = {main[0]}
secret_key = {main[1]}

[s3 alt]
display_name = alt
email = alt@example.com
user_id = imstore-alt
access_key = {alt[0]}
secret_key = {alt[1]}

[s3 tenant]
display_name = tenant
user_id = imstore-tenant
access_key = {tenant[0]}
secret_key = {tenant[1]}
email = tenant@example.com
tenant = testx

[iam]
email = s3@example.com
user_id = iam
access_key = {main[0]}
secret_key = {main[1]}
display_name = iam

[iam root]
access_key = {main[0]}
secret_key = {main[1]}
user_id = RGW11111111111111111
email = root@example.com

[iam alt root]
access_key = {alt[0]}
secret_key = {alt[1]}
user_id = RGW22222222222222222
email = altroot@example.com
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_listening(port: int, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"serve exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"serve did not listen on {port} within {timeout} s")


def by_design() -> dict[str, str]:
    """test name -> why it fails (design: by the store's promises; gap: not offered yet), from by_design.txt."""
    reasons = {}
    for line in (HERE / "by_design.txt").read_text().splitlines():
        name, _, reason = line.partition(" ")
        if name and not name.startswith("#"):
            reasons[name] = reason.strip()
    return reasons


def outcomes(junit: Path) -> dict[str, str]:
    found = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        kinds = {child.tag for child in case}
        found[case.get("name", "")] = "failed" if kinds & {"failure", "error"} else "skipped" if "skipped" in kinds else "passed"
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default=str(SUITE), help="the s3-tests checkout")
    parser.add_argument("-k", dest="selection", default=DEFAULT_SELECTION, help="pytest -k expression")
    parser.add_argument("--workers", default="2")
    parser.add_argument("--show", action="store_true", help="print every unexpected failure's name")
    parser.add_argument("--report", help="write every test's outcome (name outcome) to this file")
    parser.add_argument("--pytest-output", action="store_true", help="show pytest's own output (tracebacks)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="imstore-s3tests-") as scratch:
        store = Path(scratch) / "store"
        Store.init(store)[0].close()
        tokens = TokenStore(store)
        keys = {name: tokens.create_s3(name, "write") for name in ("main", "alt", "tenant")}
        port, s3_port = free_port(), free_port()
        conf = Path(scratch) / "s3tests.conf"
        conf.write_text(CONF.format(port=s3_port, **keys))
        log = open(Path(scratch) / "serve.log", "wb")
        serve = subprocess.Popen([sys.executable, "-m", "imstore", "--store", str(store), "serve", "--port", str(port),
                                  "--s3-port", str(s3_port), "--workers", args.workers], stdout=log, stderr=log)  # fmt: skip
        try:
            wait_listening(s3_port, serve)
            junit = Path(scratch) / "junit.xml"
            env = {**{k: v for k, v in os.environ.items() if not k.startswith("AWS_")}, "S3TEST_CONF": str(conf),
                   "PYTHONPATH": os.pathsep.join([str(HERE), args.suite])}  # fmt: skip
            subprocess.run([sys.executable, "-m", "pytest", "-p", "imstore_s3tests_plugin", "-p", "no:cacheprovider", "-q",
                            "-o", "addopts=", "--timeout", "120", "-k", args.selection, f"--junitxml={junit}",
                            "s3tests/functional/test_s3.py"], cwd=args.suite, env=env,
                           stdout=None if args.pytest_output else subprocess.DEVNULL)  # fmt: skip
        finally:
            serve.terminate()
            serve.wait(30)
            log.close()
        results = outcomes(junit)
    if args.report:
        Path(args.report).write_text("".join(f"{name} {outcome}\n" for name, outcome in sorted(results.items())))
    expected = by_design()
    failed = sorted(name for name, outcome in results.items() if outcome == "failed")
    unexpected = [name for name in failed if name not in expected]
    passed = sum(outcome == "passed" for outcome in results.values())
    design = sum(expected.get(name, "").startswith("design:") for name in failed)
    client = sum(expected.get(name, "").startswith("client:") for name in failed)
    gaps = len(failed) - len(unexpected) - design - client
    print(f"s3-tests ({args.selection if args.selection != DEFAULT_SELECTION else 'issue 13 groups'}): {len(results)} run,"
          f" {passed} passed, {design} failed by design, {gaps} failed on known gaps, {client} failed in the client,"
          f" {len(unexpected)} failed otherwise, {sum(o == 'skipped' for o in results.values())} skipped")  # fmt: skip
    fixed = sorted(name for name in expected if results.get(name) == "passed")
    if fixed:
        print("  listed in by_design.txt but passed (remove them):", " ".join(fixed))
    if args.show:
        for name in unexpected:
            print("  unexpected:", name)
    return 1 if unexpected else 0


if __name__ == "__main__":
    sys.exit(main())
