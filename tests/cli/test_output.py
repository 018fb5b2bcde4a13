"""Output rendering: tables and progress only on a terminal, plain lines and silence elsewhere."""

from __future__ import annotations

import io

from imstore.cli.output import Output


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_rows_are_tab_separated_on_a_pipe_and_a_table_on_a_terminal():
    pipe, terminal = io.StringIO(), FakeTerminal()
    Output(stdout=pipe).rows(["key", "size"], [["a", 1], ["b", None]])
    Output(stdout=terminal, color=False).rows(["key", "size"], [["a", 1], ["b", None]])
    assert pipe.getvalue() == "a\t1\nb\t-\n"
    assert "key" in terminal.getvalue() and "\t" not in terminal.getvalue()


def test_progress_draws_on_a_terminal_and_stays_silent_on_a_pipe_or_with_json():
    terminal, pipe = FakeTerminal(), io.StringIO()
    with Output(stderr=terminal, color=False).progress("put big", 100, unit_bytes=True) as bar:
        bar.advance(60)
        bar.advance(40)
    assert "put big" in terminal.getvalue()
    for output in (Output(stderr=pipe), Output(stderr=FakeTerminal(), json=True), Output(stderr=FakeTerminal(), quiet=True)):
        with output.progress("put big", 100) as bar:
            bar.advance(100)
        assert output.stderr.getvalue() == ""


def test_no_color_environment_variable_turns_colour_off(monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")
    assert Output().color is False


def test_a_table_on_a_terminal_shortens_hashes_so_rows_do_not_wrap_and_a_pipe_keeps_them_whole():
    full = "0123456789abcdef" * 4
    rows = [["notes/todo.txt", 3, full, 120, "2026-11-30T12:00:00.123456Z"]]
    headers = ["key", "version", "hash", "size", "time"]
    pipe, terminal = io.StringIO(), FakeTerminal()
    Output(stdout=pipe).rows(headers, rows)
    Output(stdout=terminal, color=False).rows(headers, rows)
    assert full in pipe.getvalue()
    assert full not in terminal.getvalue() and full[:16] + "…" in terminal.getvalue()
    assert max(len(line) for line in terminal.getvalue().splitlines()) <= 100
