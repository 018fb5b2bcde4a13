"""Shared fixtures: a fresh store in tmp_path, and the CLI run in-process or as a real process."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from imstore import Store

IMSTORE = [sys.executable, "-m", "imstore"]


def _private_environment(patch: pytest.MonkeyPatch, folder: Path) -> Path:
    """A read cache folder and remote CLI state under folder (never the user's), children included: the cache's path."""
    patch.setenv("IMSTORE_CACHE_DIR", str(folder / "imstore-cache"))
    patch.setenv("XDG_STATE_HOME", str(folder / "state"))  # the remote CLI's checkpoints
    patch.delenv("IMSTORE_NO_CACHE", raising=False)
    return folder / "imstore-cache"


@pytest.fixture(scope="session", autouse=True)
def session_cache_dir(tmp_path_factory):
    """For servers that a module or session shares: they start before any test's own folder is set."""
    patch = pytest.MonkeyPatch()
    yield _private_environment(patch, tmp_path_factory.mktemp("session-env"))
    patch.undo()


@pytest.fixture(autouse=True)
def private_cache_dir(tmp_path: Path, monkeypatch) -> Path:
    """Each test gets its own read cache folder and remote CLI state."""
    return _private_environment(monkeypatch, tmp_path)


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    path = tmp_path / "store"
    Store.init(path)[0].close()
    return path


@pytest.fixture
def store(store_path: Path):
    with Store.open(store_path) as opened:
        yield opened


@dataclass
class Result:
    code: int
    stdout: bytes
    stderr: str

    @property
    def out(self) -> str:
        return self.stdout.decode("utf-8")


class _BinaryStdout(io.TextIOWrapper):
    """A text stdout with .buffer, like the real one, that is not a terminal."""


def run_cli_in_process(args: list[str], *, stdin: bytes = b"", env: dict | None = None, monkeypatch=None) -> Result:
    """Run imstore.cli.run in this process with captured binary stdout/stderr."""
    from imstore import cli

    raw_out, raw_err = io.BytesIO(), io.BytesIO()
    fake_in = io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8")
    fake_out = io.TextIOWrapper(raw_out, encoding="utf-8", write_through=True)
    fake_err = io.TextIOWrapper(raw_err, encoding="utf-8", write_through=True)
    saved = sys.stdin, sys.stdout, sys.stderr
    saved_env = {name: os.environ.get(name) for name in (env or {})}
    os.environ.update(env or {})
    sys.stdin, sys.stdout, sys.stderr = fake_in, fake_out, fake_err
    try:
        code = cli.run(args)
    finally:
        sys.stdin, sys.stdout, sys.stderr = saved
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    return Result(code, raw_out.getvalue(), raw_err.getvalue().decode("utf-8"))


def run_cli_process(args: list[str], *, stdin: bytes | None = b"", env: dict | None = None, timeout: float = 60) -> Result:
    """Run `python -m imstore` as a real subprocess."""
    full_env = {**os.environ, **(env or {})}
    completed = subprocess.run(
        IMSTORE + list(args),
        input=stdin,
        stdin=subprocess.DEVNULL if stdin is None else None,
        capture_output=True,
        env=full_env,
        timeout=timeout,
    )
    return Result(completed.returncode, completed.stdout, completed.stderr.decode("utf-8", "replace"))


@pytest.fixture
def cli(store_path: Path):
    """cli(*args, stdin=b"") runs the CLI in-process against the fixture store."""

    def invoke(*args: str, stdin: bytes = b"", env: dict | None = None) -> Result:
        return run_cli_in_process(["--store", str(store_path), *args], stdin=stdin, env=env)

    return invoke


@pytest.fixture
def cli_process(store_path: Path):
    """cli_process(*args, stdin=b"") runs `python -m imstore` against the fixture store."""

    def invoke(*args: str, stdin: bytes | None = b"", env: dict | None = None, timeout: float = 60) -> Result:
        return run_cli_process(["--store", str(store_path), *args], stdin=stdin, env=env, timeout=timeout)

    return invoke
