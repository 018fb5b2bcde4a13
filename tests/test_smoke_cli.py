"""A first end-to-end check of the CLI through a real process."""


def test_put_get_history_round_trip_through_a_real_process(cli_process):
    first = cli_process("put", "greeting", stdin=b"hello\n")
    assert first.code == 0, first.stderr
    assert cli_process("put", "greeting", stdin=b"bye\n").code == 0
    assert cli_process("get", "greeting").stdout == b"bye\n"
    assert cli_process("get", "greeting", "--version", "1").stdout == b"hello\n"
    history = cli_process("history", "greeting", "--json")
    assert [entry["version"] for entry in __import__("json").loads(history.stdout)] == [1, 2]
