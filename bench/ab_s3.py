"""A/B of the 1 GiB S3 copy: two or more `imstore serve` (https) side by side, or aws-cli settings, in alternating rounds.

Each round times `imstore --remote put` (the anchor) and `aws s3 cp` of a fresh 1 GiB file on every variant, the
order flipped every other round; it prints each variant's medians, its copy/put ratio (paired by round) and the
copy of each variant paired against the first one's. A variant is a serve run with its own PYTHONPATH (a copy of
`imstore/` with the change, including the compiled `_md5lanes*.so`) and environment, or the same serve with an
aws-cli config file of its own (--aws-config). Time it on a quiet machine (load average under 1).

    cp -r imstore /tmp/base/ && cp -r imstore /tmp/change/   # then edit /tmp/change/imstore
    .venv/bin/python bench/ab_s3.py --variant base=/tmp/base --variant change=/tmp/change --rounds 7
    .venv/bin/python bench/ab_s3.py --aws-config default= --aws-config big-parts='s3 =\\n    multipart_chunksize = 64MB'
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench_s3 import _timed, aws_cli, client_env, copy_command, fresh_content, put_command, start_serve

from imstore import Store
from imstore.server.auth import TokenStore


def _pairs(values: list[str], what: str) -> dict[str, str]:
    pairs = {}
    for value in values:
        name, equals, rest = value.partition("=")
        if not equals or not name:
            raise SystemExit(f"{what} is NAME=VALUE, not {value!r}")
        pairs[name] = rest
    return pairs


def package_run_by(env: dict[str, str]) -> str:
    """The imstore/ that `python -m imstore` runs with this environment, from the working directory."""
    found = subprocess.run([sys.executable, "-c", "import imstore, os; print(os.path.dirname(os.path.realpath(imstore.__file__)))"],
                           env={**os.environ, **env}, capture_output=True, text=True, check=True)  # fmt: skip
    return found.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", action="append", default=[], help="NAME=PYTHONPATH of a serve to compare (repeat)")
    parser.add_argument("--env", action="append", default=[], help="NAME:VAR=VALUE, an environment variable of one variant")
    parser.add_argument("--aws-config", action="append", default=[], help="NAME=TEXT of an aws-cli config's [default] (\\n: newline)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--mib", type=int, default=1024)
    parser.add_argument("--workers", default="2")
    args = parser.parse_args()
    variants = _pairs(args.variant, "--variant") or {"main": ""}
    configs = {name: text.replace("\\n", "\n") for name, text in _pairs(args.aws_config, "--aws-config").items()}
    if len(variants) > 1 and configs:
        raise SystemExit("compare code (--variant) or aws-cli settings (--aws-config), not both at once")
    extra: dict[str, dict[str, str]] = {name: {} for name in variants}
    for item in args.env:
        name, _, assignment = item.partition(":")
        variable, _, value = assignment.partition("=")
        if name not in extra or not variable:
            raise SystemExit(f"--env is NAME:VAR=VALUE for a NAME given with --variant, not {item!r}")
        extra[name][variable] = value
    aws = aws_cli()
    if aws is None:
        raise SystemExit("aws-cli is not installed (pip install awscli)")
    with tempfile.TemporaryDirectory(prefix="ab-s3-") as scratch, contextlib.ExitStack() as stack:
        work = Path(scratch)
        # `python -m imstore` puts the working directory first on sys.path, ahead of PYTHONPATH: run the serves and
        # clients from here, or a checkout's own imstore/ would stand in for every variant.
        stack.callback(os.chdir, os.getcwd())
        os.chdir(work)
        store = work / "store"
        with Store.init(store)[0] as opened:
            opened.put("bench/", b"")  # the bucket
        tokens = TokenStore(store)
        (work / "token").write_text(tokens.create("bench", "write"))
        (work / "token").chmod(0o600)
        key = tokens.create_s3("bench-s3", "write")
        servers = {}
        for name, path in variants.items():
            env = {**({"PYTHONPATH": path} if path else {}), **extra.get(name, {})}
            runs_from = package_run_by(env)
            if path and not runs_from.startswith(os.path.realpath(path) + os.sep):
                raise SystemExit(f"variant {name} would run {runs_from}, not the imstore/ under {path}")
            print(f"{name}: {runs_from}")
            servers[name] = start_serve(work, store, argparse.Namespace(workers=args.workers), stack, True, False, name, env)
        for name, text in (configs or {"": ""}).items():
            (work / f"aws-{name}.cfg").write_text(f"[default]\n{text}\n")
        source = work / "big.bin"
        with open(source, "wb") as handle:
            for _ in range(args.mib):
                handle.write(os.urandom(1 << 20))
        runs = [(name, config) for name in variants for config in (configs or {"": ""})]
        anchor_config = next(iter(configs), "")  # the put is timed once a round for each serve, with this config's copy
        puts: dict[str, list] = {name: [] for name in variants}
        copies: dict[tuple, list] = {run: [] for run in runs}
        for round_number in range(args.rounds):
            order = runs if round_number % 2 == 0 else runs[::-1]
            for name, config in order:
                server = servers[name]
                env = client_env(work, key, work / f"aws-{config}.cfg")
                if config == anchor_config:
                    fresh_content(source)
                    url = f"https://127.0.0.1:{server['port']}"
                    put = put_command(url, work / "token", work, f"bench/put-{name}-{round_number}", source)
                    puts[name].append(_timed(put, {**env, **({"PYTHONPATH": variants[name]} if variants[name] else {})},
                                             server["serve"], store))  # fmt: skip
                fresh_content(source)
                copy = copy_command(aws, f"https://127.0.0.1:{server['s3_port']}", work, source, f"s3://bench/cp-{name}-{config}-{round_number}")
                copies[(name, config)].append(_timed(copy, env, server["serve"], store))
        first = runs[0]
        for name, config in runs:
            label = f"{name}{'/' + config if config else ''}"
            rows = [("put", puts[name])] if config == anchor_config else []
            rows.append(("cp", copies[(name, config)]))
            for what, timed in rows:
                cpu = [statistics.median(t[1][i] for t in timed) for i in range(3)]
                print(f"{label:16s} {what:3s} {statistics.median(t[0] for t in timed):6.3f} s   CPU s client {cpu[0]:.2f}"
                      f" gateway {cpu[1]:.2f} workers {cpu[2]:.2f}")
            ratio = statistics.median(c[0] / p[0] for c, p in zip(copies[(name, config)], puts[name], strict=True))
            against = statistics.median(c[0] / b[0] for c, b in zip(copies[(name, config)], copies[first], strict=True))
            print(f"{label:16s} cp/put {ratio:.3f} (paired)   cp against {first[0]}{'/' + first[1] if first[1] else ''}: {against:.3f}")


if __name__ == "__main__":
    main()
