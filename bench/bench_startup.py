"""Start-up: one `imstore get` process for a small object vs `python -c "import typer"`.

Goal (issue 10; 1.3x in issue 2): imstore get <= 1.2x import typer, both in this venv's Python.

The package is byte-compiled first (`python -m compileall -q imstore`), as
`make install` does and a normal install would: this environment sets
PYTHONDONTWRITEBYTECODE=1, so without it every run would recompile imstore from
source. `python -c pass` is printed too, as the floor nobody can beat. Runs are
interleaved (imstore, typer, python, next round in another order); medians.

Example: .venv/bin/python bench/bench_startup.py --runs 30
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import ROOT, compile_package, imstore_command, interleaved, load_note, median, print_ratio, print_times, timed

GOAL = 1.2  # issue 10 (was 1.3, issue 2)


def run(runs: int) -> dict:
    compile_package()
    imstore = imstore_command()
    with tempfile.TemporaryDirectory(prefix="imstore-bench-startup-") as temp:
        store = Path(temp) / "store"
        subprocess.run([*imstore, "init", str(store)], check=True, capture_output=True)
        subprocess.run([*imstore, "--store", str(store), "put", "small"], input=b"hello\n" * 100, check=True, capture_output=True)
        names = {"imstore": "imstore get (small object)", "typer": 'python -c "import typer"', "pass": 'python -c "pass"'}
        commands = {
            names["imstore"]: [*imstore, "--store", str(store), "get", "small"],
            names["typer"]: [sys.executable, "-c", "import typer"],
            names["pass"]: [sys.executable, "-c", "pass"],
        }
        cpu: dict[str, list[float]] = {name: [] for name in commands}

        def case(name: str):
            return lambda: timed(commands[name], cwd=ROOT, cpu=cpu[name])

        cases = {name: case(name) for name in commands}
        for run_once in cases.values():  # one untimed warm-up each: page cache, not bytecode (compiled above)
            run_once()
        for values in cpu.values():
            values.clear()
        times = interleaved(cases, runs)
    medians = {name: median(values) for name, values in times.items()}
    cpu_medians = {name: median(values) for name, values in cpu.items()}
    print_times(f"start-up, {runs} runs each, interleaved ({load_note()})", times, unit="ms")
    print_times("CPU time (user + system) of the same runs", cpu, unit="ms")
    ratio = medians[names["imstore"]] / medians[names["typer"]]
    cpu_ratio = cpu_medians[names["imstore"]] / cpu_medians[names["typer"]]
    print_ratio("imstore get / import typer", ratio, f"<= {GOAL}", ratio <= GOAL)
    print_ratio("same, CPU time", cpu_ratio, f"<= {GOAL}", cpu_ratio <= GOAL)
    return {"runs": runs, "medians": medians, "cpu_medians": cpu_medians, "ratio_vs_typer": ratio, "cpu_ratio_vs_typer": cpu_ratio}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--quick", action="store_true", help="10 runs")
    args = parser.parse_args(argv)
    if args.quick:
        args.runs = min(args.runs, 10)
    run(args.runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
