"""Completions, the man page and the README are generated from / checked against the CLI."""

from __future__ import annotations

import runpy
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
gen_docs = runpy.run_path(str(ROOT / "scripts" / "gen_docs.py"), run_name="gen_docs")


def test_committed_completions_and_man_page_match_the_cli():
    stale = [path for path, text in gen_docs["render_all"]().items() if (ROOT / path).read_text() != text]
    assert not stale, f"stale generated files (run `make docs`): {stale}"


@pytest.mark.skipif(shutil.which("groff") is None, reason="groff is not installed")
def test_man_page_has_no_groff_warnings():
    result = subprocess.run(["groff", "-man", "-ww", "-z", str(ROOT / "man" / "imstore.1")], capture_output=True, text=True)
    assert result.returncode == 0 and result.stderr == "", result.stderr


def test_bash_completion_is_valid_bash_and_completes_commands():
    script = ROOT / "completions" / "imstore.bash"
    probe = f'source {script}; COMP_WORDS=(imstore hi); COMP_CWORD=1; _imstore; printf "%s\\n" "${{COMPREPLY[@]}}"'
    result = subprocess.run(["bash", "-c", probe], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["history"]
    probe = f'source {script}; COMP_WORDS=(imstore get --v); COMP_CWORD=2; _imstore; printf "%s\\n" "${{COMPREPLY[@]}}"'
    assert subprocess.run(["bash", "-c", probe], capture_output=True, text=True).stdout.split() == ["--version"]


@pytest.mark.parametrize("shell, path", [("zsh", "_imstore"), ("fish", "imstore.fish")])
def test_other_completions_parse(shell, path):
    if shutil.which(shell) is None:
        pytest.skip(f"{shell} is not installed")
    result = subprocess.run([shell, "-n", str(ROOT / "completions" / path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_every_command_is_in_the_man_page_and_the_readme():
    tree = gen_docs["load_tree"]()
    names = [" ".join(cmd.path) for cmd in gen_docs["all_commands"](tree)]
    man = (ROOT / "man" / "imstore.1").read_text()
    readme = (ROOT / "README.md").read_text()
    missing_man = [name for name in names if f".SS {name.replace('-', chr(92) + '-')}" not in man]
    missing_readme = [name for name in names if f"imstore {name}" not in readme]
    assert not missing_man, missing_man
    assert not missing_readme, f"commands not shown in README.md: {missing_readme}"


def test_every_command_has_an_example_in_its_help():
    tree = gen_docs["load_tree"]()
    without = [" ".join(cmd.path) for cmd in gen_docs["all_commands"](tree) if not cmd.subcommands and "Example:" not in cmd.help]
    assert not without, without


@pytest.mark.skipif(shutil.which("fish") is None, reason="fish is not installed")
def test_fish_completion_offers_commands_and_their_options():
    script = ROOT / "completions" / "imstore.fish"
    result = subprocess.run(
        ["fish", "-c", f"source {script}; complete -C 'imstore hi'; echo ---; complete -C 'imstore get --v'"],
        capture_output=True,
        text=True,
    )
    first, second = result.stdout.split("---")
    assert first.strip().splitlines()[0].split("\t")[0] == "history"
    assert "--version" in second
