"""The lazy command table: a run builds only its command, help and the docs see all of them."""

from __future__ import annotations

import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from conftest import run_cli_in_process

from imstore import cli

ROOT = Path(__file__).resolve().parents[2]
TOPIC_MODULES = ["imstore.cli.admin", "imstore.cli.batch", "imstore.cli.keys"]


def _global_options() -> list:
    return [param for param in typer.main.get_command(cli.app).params if param.param_type_name == "option"]


def test_a_run_imports_only_the_module_of_its_command(store_path):
    probe = (
        "import sys\nfrom imstore import cli\n"
        f"loaded = sorted(m for m in {TOPIC_MODULES} if m in sys.modules)\n"
        f"code = cli.run(['--store', {str(store_path)!r}, 'ls'])\n"
        f"print(loaded, code, sorted(m for m in {TOPIC_MODULES} if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "[] 0 ['imstore.cli.keys']", result.stderr


def test_help_and_the_app_list_every_command_of_the_table_in_order():
    assert list(typer.main.get_command(cli.app).commands) == list(cli.COMMANDS)
    help_text = run_cli_in_process(["--help"]).out
    listed = [line.split()[1] for line in help_text.splitlines() if line.startswith("│ ") and line[2].isalpha()]
    assert listed[-len(cli.COMMANDS) :] == list(cli.COMMANDS), help_text


def test_an_unknown_command_is_a_usage_error_that_suggests_the_near_one():
    result = run_cli_in_process(["hsitory"])
    assert result.code == 2 and "Did you mean 'history'?" in result.stderr


@pytest.mark.parametrize("option", [opt for param in _global_options() if not param.is_flag for opt in param.opts])
def test_the_value_of_a_global_option_is_never_taken_for_the_command_name(option):
    # The value "get" names a command too: only the word after it is the command.
    result = run_cli_in_process([option, "get", "ls", "--help"])
    assert result.code == 0, result.stderr
    assert "imstore ls [OPTIONS]" in result.out


def test_the_flags_accepted_after_the_command_name_are_those_the_completions_offer_there():
    gen_docs = runpy.run_path(str(ROOT / "scripts" / "gen_docs.py"), run_name="gen_docs")
    after = {opt for param in _global_options() if param.name in cli._after_command_params() for opt in param.opts}
    assert after == gen_docs["OUTPUT_OPTIONS"]


@pytest.mark.parametrize("flag", ["--json", "-q", "--quiet", "--no-color", "--debug"])
def test_an_output_flag_after_the_command_name_means_what_it_means_before_it(cli, flag):
    assert cli("put", "k", stdin=b"x").code == 0
    before, after = cli(flag, "ls"), cli("ls", flag)
    assert (after.code, after.stdout, after.stderr) == (before.code, before.stdout, before.stderr)
    assert cli("cache", "stats", flag).code == 0


def test_a_subcommand_keeps_its_own_option_of_the_same_name_as_a_global_flag(cli):
    assert cli("put", "k", stdin=b"one").code == 0
    assert cli("put", "k", stdin=b"two").code == 0
    assert cli("get", "k", "--version", "1").stdout == b"one"
