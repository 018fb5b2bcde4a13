"""S3 on `serve --s3-port` against HTTP API v1 of the same server, in the same run.

Goals (issue 13): 4 KiB GETs over S3 (SigV4 in the header) >= 0.8x the requests/s of
GET /v1/keys/{key} with a bearer token; `aws s3 cp` of a 1 GiB file (multipart) <= 1.3x
the time of `imstore --remote URL put` of it. The S3 GET is signed once and replayed by wrk
(SigV4 allows it within the clock-skew limit), so both sides measure the server, not the client.
wrk (Debian) drives the GETs; aws-cli comes with the test extras. Without one the part that
needs it says so.

Example: .venv/bin/python bench/bench_s3.py --seconds 10 --big-mib 1024 --rounds 3
The copy alone, over http and https, with the floor (aws-cli to a server that discards the body):
    .venv/bin/python bench/bench_s3.py --parts copy --transports http,https --floor --big-mib 1024 --rounds 3
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
from _common import release_cached
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


def _cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def _timed(command: list[str], env: dict, serve: psutil.Process | None, store: Path) -> tuple[float, list[float]]:
    """(seconds, [client CPU, gateway CPU, workers' CPU]) of one command; the server's CPU from its processes (the null
    server's is in the gateway's column). Earlier rounds' bytes leave the page cache first (release_cached)."""
    release_cached(store)
    processes = [serve, *serve.children()] if serve is not None else []
    before = [_cpu(process) for process in processes]
    start = time.perf_counter()
    child = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    if status:
        raise RuntimeError(f"{command[0]} failed: {child.stderr.read().decode()[-2000:]}")
    child.stderr.close()
    spent = [_cpu(process) - earlier for process, earlier in zip(processes, before, strict=True)]
    return seconds, [usage.ru_utime + usage.ru_stime, spent[0] if spent else 0.0, sum(spent[1:])]


def aws_cli() -> str | None:
    """aws-cli: the one in this venv (the test extras), else one on PATH."""
    return shutil.which("aws", path=str(Path(sys.executable).parent)) or shutil.which("aws")


def client_env(work: Path, key: tuple[str, str], aws_config: Path) -> dict[str, str]:
    """The clients' environment: the S3 key and aws_config instead of the user's AWS_ settings, and the remote CLI's
    checkpoints of this run's servers in work (a later run's server on a port an earlier one had would look like
    that server's history rolled back, and the put would refuse it)."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith("AWS_")}, "AWS_ACCESS_KEY_ID": key[0],
            "AWS_SECRET_ACCESS_KEY": key[1], "AWS_DEFAULT_REGION": "us-east-1", "AWS_CONFIG_FILE": str(aws_config),
            "XDG_STATE_HOME": str(work / "state")}  # fmt: skip


def put_command(url: str, token_file: Path, work: Path, key: str, source: Path) -> list[str]:
    """`imstore --remote URL put` (trusting the run's certificate over https)."""
    cacert = ["--cacert", str(work / "cert.pem")] if url.startswith("https") else []
    return [*IMSTORE, "--remote", url, "--token-file", str(token_file), *cacert, "put", key, str(source)]


def copy_command(aws: str, endpoint: str, work: Path, source: Path, target: str) -> list[str]:
    """`aws s3 cp` of source to the s3:// target (trusting the run's certificate over https)."""
    trust = ["--ca-bundle", str(work / "cert.pem")] if endpoint.startswith("https") else []
    return [aws, "--endpoint-url", endpoint, *trust, "s3", "cp", "--only-show-errors", str(source), target]


def fresh_content(source: Path) -> None:
    """Make the file's bytes new to the store: a copy of bytes already stored would be a dedup hit, which reads
    the stored object back to check it, where a put of new bytes hashes what it writes (not what is timed)."""
    with open(source, "r+b") as handle:
        handle.write(os.urandom(16))


def copy_benchmark(args, work: Path, servers: dict, token: str, key: tuple[str, str]) -> None:
    """Interleaved rounds of `imstore --remote put` and `aws s3 cp` of one file (and, with --floor, `aws s3 cp` to
    a server that discards the body), for each transport; medians of the time and of each process's CPU."""
    aws = aws_cli()
    if aws is None:
        print("large copy: skipped (aws-cli is not installed: pip install awscli)")
        return
    source = work / "big.bin"
    with open(source, "wb") as handle:
        for _ in range(args.big_mib):
            handle.write(os.urandom(1 << 20))
    token_file = work / "token"
    token_file.write_text(token)
    token_file.chmod(0o600)
    env = client_env(work, key, work / "none")
    runs = {transport: {"put": [], "cp": [], "null": []} for transport in servers}
    for round_number in range(args.rounds):  # interleaved, rounds and transports, so load on the machine hits each alike
        for transport, server in servers.items():
            scheme = "https" if transport.startswith("https") else "http"
            put = put_command(f"{scheme}://127.0.0.1:{server['port']}", token_file, work, f"bench/put-{transport}-{round_number}", source)
            fresh_content(source)
            runs[transport]["put"].append(_timed(put, env, server["serve"], work / "store"))
            copy = copy_command(aws, f"{scheme}://127.0.0.1:{server['s3_port']}", work, source, f"s3://bench/cp-{transport}-{round_number}")
            fresh_content(source)
            runs[transport]["cp"].append(_timed(copy, env, server["serve"], work / "store"))
            if "null" in server:
                null = copy_command(aws, f"{scheme}://127.0.0.1:{server['null']}", work, source, "s3://bench/null")
                runs[transport]["null"].append(_timed(null, env, server["null_process"], work / "store"))
    for transport in servers:
        put_seconds = statistics.median(seconds for seconds, _ in runs[transport]["put"])
        for name, label in (("put", "imstore --remote put"), ("cp", "aws s3 cp"), ("null", "aws s3 cp, null server")):
            if runs[transport][name]:
                seconds = statistics.median(seconds for seconds, _ in runs[transport][name])
                client, gateway, workers = (statistics.median(cpu[i] for _, cpu in runs[transport][name]) for i in range(3))
                # each round's own ratio too: its put and cp ran back to back, so a machine that speeds up or
                # slows down between rounds (this VM's neighbours do) moves both
                paired = statistics.median(s / p for (s, _), (p, _) in zip(runs[transport][name], runs[transport]["put"], strict=True))
                print(f"{args.big_mib} MiB {transport:13s} {label:24s} {seconds:6.2f} s  {seconds / put_seconds:5.2f}x"
                      f"  (paired {paired:4.2f}x)   CPU s: client {client:5.2f}  gateway {gateway:5.2f}  workers {workers:5.2f}"
                      + ("   (goal <= 1.30x)" if name == "cp" else ""))  # fmt: skip
    if "https" in runs and "https-hashlib" in runs:  # the MD5 lanes against hashlib, round by round
        paired = statistics.median(a / b for (a, _), (b, _) in zip(runs["https"]["cp"], runs["https-hashlib"]["cp"], strict=True))
        print(f"aws s3 cp with MD5 lanes / with hashlib's MD5, each round's pair: median {paired:.3f}")


def start_serve(work: Path, store: Path, args, stack: contextlib.ExitStack, tls: bool, floor: bool, name: str | None = None,
                env: dict | None = None) -> dict:  # fmt: skip
    """An `imstore serve --s3-port` (https with a self-signed certificate when tls), and with floor a null S3 server."""
    port, s3_port = free_port(), free_port()
    transport = name or ("https" if tls else "http")
    certificate = ["--tls-cert", str(work / "cert.pem"), "--tls-key", str(work / "key.pem")] if tls else []
    if tls and not (work / "cert.pem").exists():
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                        "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(work / "key.pem"), "-out", str(work / "cert.pem")],
                       check=True, capture_output=True)  # fmt: skip
    log = stack.enter_context(open(work / f"serve-{transport}.log", "wb"))
    serve = subprocess.Popen([*IMSTORE, "--store", str(store), "serve", "--port", str(port), "--s3-port", str(s3_port),
                              "--workers", args.workers, *certificate], stdout=log, stderr=log,
                             env={**os.environ, **(env or {})})  # fmt: skip
    stack.callback(lambda: (serve.terminate(), serve.wait(30)))
    server = {"port": port, "s3_port": s3_port, "serve": psutil.Process(serve.pid)}
    wait_port(port)
    wait_port(s3_port)
    if floor:
        null_port = free_port()
        null_tls = [str(work / "cert.pem"), str(work / "key.pem")] if tls else []
        null = subprocess.Popen([sys.executable, str(Path(__file__).with_name("s3_null.py")), str(null_port), *null_tls])
        stack.callback(lambda: (null.terminate(), null.wait(30)))
        wait_port(null_port)
        server["null"], server["null_process"] = null_port, psutil.Process(null.pid)
    return server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10, help="per wrk run")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--big-mib", type=int, default=1024, help="size of the copied file")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", default="2")
    parser.add_argument("--parts", default="get,copy", help="comma-separated: get (4 KiB GETs), copy (the large copy)")
    parser.add_argument("--transports", default="http", help="comma-separated: http, https (self-signed) for the copy;"
                        " https-hashlib: https with every MD5 by hashlib (IMSTORE_MD5LANES=0), to compare with the lanes")  # fmt: skip
    parser.add_argument("--floor", action="store_true", help="also time aws s3 cp to a server that discards the body (bench/s3_null.py)")
    args = parser.parse_args(argv)
    parts, transports = args.parts.split(","), args.transports.split(",")
    with tempfile.TemporaryDirectory(prefix="imstore-bench-s3-") as scratch, contextlib.ExitStack() as stack:
        work = Path(scratch)
        store = work / "store"
        with Store.init(store)[0] as opened:
            opened.put("bench/", b"")  # the bucket's marker, as CreateBucket writes it
            opened.put("bench/small", os.urandom(4096))
        tokens = TokenStore(store)
        token, key = tokens.create("bench", "write"), tokens.create_s3("bench-s3", "write")
        servers = {transport: start_serve(work, store, args, stack, transport.startswith("https"), args.floor, transport,
                                          {"IMSTORE_MD5LANES": "0"} if transport == "https-hashlib" else None)
                   for transport in transports}  # fmt: skip
        print(f"bench_s3 {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, {args.workers} workers, {os.cpu_count()} CPUs,"
              f" load {os.getloadavg()[0]:.2f}")  # fmt: skip
        if "get" in parts:
            plain = servers.get("http") or start_serve(work, store, args, stack, False, False)
            get_benchmark(args, plain["port"], plain["s3_port"], token, key)
        if "copy" in parts:
            copy_benchmark(args, work, servers, token, key)
    return 0


if __name__ == "__main__":
    sys.exit(main())
