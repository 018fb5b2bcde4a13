"""S3 on `serve --s3-port` against HTTP API v1 of the same server, in the same run.

Goals (issue 13): 4 KiB GETs over S3 (SigV4 in the header) >= 0.8x the requests/s of
GET /v1/keys/{key} with a bearer token; `aws s3 cp` of a 1 GiB file (multipart) <= 1.3x
the time of `imstore --remote URL put` of it. The S3 GET is signed once and replayed by wrk
(SigV4 allows it within the clock-skew limit), so both sides measure the server, not the client.
wrk (Debian) drives the GETs; aws-cli comes with the test extras. Without one the part that
needs it says so.

Example: .venv/bin/python bench/bench_s3.py --seconds 10 --big-mib 1024 --rounds 3
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_serve import free_port, wait_port, wrk

from imstore import Store
from imstore.server.auth import TokenStore

IMSTORE = [sys.executable, "-m", "imstore"]


def sigv4_headers(host: str, path: str, key: tuple[str, str]) -> list[str]:
    """Headers of a GET signed by botocore now (valid for the skew limit: replayable by wrk)."""
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    request = AWSRequest(method="GET", url=f"http://{host}{path}", headers={"Host": host})
    S3SigV4Auth(Credentials(*key), "s3", "us-east-1").add_auth(request)
    return [f"{name}: {value}" for name, value in request.headers.items() if name != "Host"]


def get_benchmark(args, port: int, s3_port: int, token: str, key: tuple[str, str]) -> None:
    if shutil.which("wrk") is None:
        print("4 KiB GETs: skipped (wrk is not installed: apt-get install wrk)")
        return
    v1_url, s3_path = f"http://127.0.0.1:{port}/v1/keys/bench%2Fsmall", "/bench/small"
    v1, s3 = [], []
    for _ in range(args.rounds):  # interleaved, so load on the machine hits both alike
        v1.append(wrk(v1_url, args.seconds, args.connections, token))
        headers = tuple(sigv4_headers(f"127.0.0.1:{s3_port}", s3_path, key))
        s3.append(wrk(f"http://127.0.0.1:{s3_port}{s3_path}", args.seconds, args.connections, headers=headers))
    ratio = statistics.median(s3) / statistics.median(v1)
    print(f"4 KiB GET  v1 {statistics.median(v1):8.0f}/s   S3 {statistics.median(s3):8.0f}/s   ratio {ratio:.2f}x (goal >= 0.80x)")


def copy_benchmark(args, work: Path, port: int, s3_port: int, token: str, key: tuple[str, str]) -> None:
    aws = shutil.which("aws", path=str(Path(sys.executable).parent)) or shutil.which("aws")
    if aws is None:
        print("large copy: skipped (aws-cli is not installed: pip install awscli)")
        return
    source = work / "big.bin"
    with open(source, "wb") as handle:
        for _ in range(args.big_mib):
            handle.write(os.urandom(1 << 20))
    token_file = work / "token"
    token_file.write_text(token)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("AWS_")}, "AWS_ACCESS_KEY_ID": key[0],
           "AWS_SECRET_ACCESS_KEY": key[1], "AWS_DEFAULT_REGION": "us-east-1", "AWS_CONFIG_FILE": str(work / "none")}  # fmt: skip
    put_times, cp_times = [], []
    for round_number in range(args.rounds):
        # A new name each round (an identical put would be 'unchanged' and skip the commit).
        with open(source, "r+b") as handle:
            handle.write(round_number.to_bytes(8, "big"))
        start = time.perf_counter()
        subprocess.run([*IMSTORE, "--remote", f"http://127.0.0.1:{port}", "--token-file", str(token_file), "put",
                        f"bench/put-{round_number}", str(source)], check=True, capture_output=True)  # fmt: skip
        put_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        subprocess.run([aws, "--endpoint-url", f"http://127.0.0.1:{s3_port}", "s3", "cp", "--only-show-errors", str(source),
                        f"s3://bench/cp-{round_number}"], check=True, capture_output=True, env=env)  # fmt: skip
        cp_times.append(time.perf_counter() - start)
    put, cp = statistics.median(put_times), statistics.median(cp_times)
    print(f"{args.big_mib} MiB  imstore --remote put {put:6.2f} s   aws s3 cp {cp:6.2f} s   ratio {cp / put:.2f}x (goal <= 1.30x)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10, help="per wrk run")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--big-mib", type=int, default=1024, help="size of the copied file")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", default="2")
    parser.add_argument("--parts", choices=("all", "get", "copy"), default="all", help="which comparisons to run")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="imstore-bench-s3-") as scratch:
        work = Path(scratch)
        store = work / "store"
        with Store.init(store)[0] as opened:
            opened.put("bench/", b"")  # the bucket's marker, as CreateBucket writes it
            opened.put("bench/small", os.urandom(4096))
        tokens = TokenStore(store)
        token, key = tokens.create("bench", "write"), tokens.create_s3("bench-s3", "write")
        port, s3_port = free_port(), free_port()
        log = open(work / "serve.log", "wb")
        serve = subprocess.Popen([*IMSTORE, "--store", str(store), "serve", "--port", str(port), "--s3-port", str(s3_port),
                                  "--workers", args.workers], stdout=log, stderr=log)  # fmt: skip
        try:
            wait_port(port)
            wait_port(s3_port)
            print(f"bench_s3 {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, {args.workers} workers, {os.cpu_count()} CPUs")
            if args.parts in ("all", "get"):
                get_benchmark(args, port, s3_port, token, key)
            if args.parts in ("all", "copy"):
                copy_benchmark(args, work, port, s3_port, token, key)
        finally:
            serve.terminate()
            serve.wait(30)
            log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
