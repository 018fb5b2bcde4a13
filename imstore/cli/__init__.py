"""The imstore command line: thin commands over the Store API.

Each command parses its options, makes one library call and hands the result to
`Output`. The commands live by topic: keys.py (init, put, get, cat, history, ls,
rm, log, verify, reindex), proofs.py (key, checkpoint, prove, check-proof),
batch.py (import, export, repack), replica.py (clone, pull, promote, rejoin, repair) and admin.py (cache,
serve, token); common.py holds what they share. COMMANDS, next to run(), names
the module of each, and a run imports only the module of its command.
Exceptions become exit codes in exactly one place, `exit_code_for()`.
"""

# No `from __future__ import annotations` here: typer would eval every string
# annotation on each start, which is most of `imstore get`'s start-up time.
import copy
import gc
import importlib
import os
import sys
import traceback
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, NamedTuple

import typer
from typer._click.exceptions import NoArgsIsHelpError
from typer._click.exceptions import UsageError as ClickUsageError
from typer.core import TyperGroup
from typer.exceptions import Abort, Exit

from .. import __version__
from ..errors import ImstoreError
from .output import Output

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class Settings:
    """Global options of one invocation. (A plain class: a dataclass costs ~1 ms to define at start-up.)

    There is one instance, `settings`, reset in place by run(): the command modules
    import it by name, so rebinding it would leave them holding a stale one.
    """

    def __init__(self, out: Output):
        self.reset(out)

    def reset(self, out: Output) -> None:
        self.out = out
        self.store: Path | None = None
        self.debug = False
        self.cache_dir: Path | None = None
        self.cache_size: str | None = None
        self.no_cache = False
        self.remote: str | None = None
        self.token_file: Path | None = None
        self.cacert: Path | None = None


settings = Settings(out=Output())


# ============================================================ global options
# Marks a global flag that may also follow the command name (`imstore ls --json`): it only
# changes how results and errors are shown, so it means the same wherever it stands.
AFTER_COMMAND_TOO = "also after the command name"


def _after_command_params() -> set[str]:
    """The names of the global options marked AFTER_COMMAND_TOO."""
    return {name for name, hint in global_options.__annotations__.items() if AFTER_COMMAND_TOO in getattr(hint, "__metadata__", ())}


def _hidden_copy(param):
    """A global output flag as a hidden option of a subcommand (help and the docs skip hidden ones)."""
    late = copy.copy(param)
    late.hidden, late.expose_value, late.envvar = True, False, None
    late.callback = _late_output_flag
    return late


def _late_output_flag(ctx, param, value: bool) -> None:
    if value:
        set_output(**{param.name: True})


def set_output(*, json_output: bool = False, quiet: bool = False, no_color: bool = False, debug: bool = False) -> None:
    """What the output flags do; given before the command name, after it, or both."""
    out = settings.out
    out.json = out.json or json_output
    out.quiet = out.quiet or quiet
    out.color = out.color and not no_color
    settings.debug = settings.debug or debug


def _version_callback(value: bool) -> None:
    if value:
        print(f"imstore {__version__}")
        raise typer.Exit()


def global_options(
    store: Annotated[
        Path | None,
        typer.Option(
            "--store",
            envvar="IMSTORE_DIR",
            help="Store directory (default: the user data dir, e.g. ~/.local/share/imstore).",
            show_default=False,
        ),
    ] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print one JSON document (or JSON lines) on stdout."), AFTER_COMMAND_TOO
    ] = False,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="Print only what was asked for, no chatter."), AFTER_COMMAND_TOO] = False,
    no_color: Annotated[bool, typer.Option("--no-color", help="No colour (NO_COLOR is honoured too)."), AFTER_COMMAND_TOO] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show a traceback on errors."), AFTER_COMMAND_TOO] = False,
    cache_dir: Annotated[
        Path | None,
        typer.Option(
            "--cache-dir",
            envvar="IMSTORE_CACHE_DIR",
            help="Read cache folder (default: the user cache dir, e.g. ~/.cache/imstore).",
            show_default=False,
        ),
    ] = None,
    cache_size: Annotated[
        str | None,
        typer.Option(
            "--cache-size", envvar="IMSTORE_CACHE_SIZE", help="Read cache size limit, e.g. 512M (default: 1G).", show_default=False
        ),
    ] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", envvar="IMSTORE_NO_CACHE", help="Read and write without the read cache.")] = False,
    remote: Annotated[
        str | None,
        typer.Option("--remote", envvar="IMSTORE_REMOTE", help="Work against an imstore serve at this URL.", metavar="URL"),
    ] = None,
    token_file: Annotated[
        Path | None,
        typer.Option("--token-file", help="File holding the API token for --remote (or set IMSTORE_TOKEN).", metavar="FILE"),
    ] = None,
    cacert: Annotated[
        Path | None,
        typer.Option("--cacert", envvar="IMSTORE_CACERT", metavar="FILE",
                     help="Trust the certificates in FILE (PEM) for an https:// --remote (a self-signed serve --tls-cert)."),  # fmt: skip
    ] = None,
    version: Annotated[
        bool, typer.Option("--version", callback=_version_callback, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """An immutable, versioned, content-addressed store.

    Every put appends a new version; nothing written is ever changed; every read is verified.
    """
    settings.store = store
    settings.cache_dir, settings.cache_size, settings.no_cache = cache_dir, cache_size, no_cache
    settings.remote = remote
    settings.token_file = token_file
    settings.cacert = cacert
    set_output(json_output=json_output, quiet=quiet, no_color=no_color, debug=debug)


# ============================================================ the command table and the entry point
class CommandInfo(NamedTuple):
    """Where a command is defined, as in pip's commands/__init__.py: a module of this
    package and the function in it (or the typer.Typer of a group of subcommands)."""

    module: str
    attribute: str


# Every command, in --help's order. A run imports only the module of its command and
# builds only that command (typer inspects the signature of every command it builds).
COMMANDS: dict[str, CommandInfo] = {
    "init": CommandInfo("keys", "init"),
    "put": CommandInfo("keys", "put"),
    "get": CommandInfo("keys", "get"),
    "cat": CommandInfo("keys", "cat"),
    "history": CommandInfo("keys", "history"),
    "ls": CommandInfo("keys", "list_keys"),
    "rm": CommandInfo("keys", "rm"),
    "log": CommandInfo("keys", "log"),
    "verify": CommandInfo("keys", "verify"),
    "reindex": CommandInfo("keys", "reindex"),
    "key": CommandInfo("proofs", "key"),
    "checkpoint": CommandInfo("proofs", "checkpoint"),
    "prove": CommandInfo("proofs", "prove"),
    "check-proof": CommandInfo("proofs", "check_proof"),
    "import": CommandInfo("batch", "import_"),
    "export": CommandInfo("batch", "export"),
    "repack": CommandInfo("batch", "repack"),
    "clone": CommandInfo("replica", "clone"),
    "pull": CommandInfo("replica", "pull"),
    "promote": CommandInfo("replica", "promote"),
    "rejoin": CommandInfo("replica", "rejoin"),
    "repair": CommandInfo("replica", "repair"),
    "serve": CommandInfo("admin", "serve"),
    "cache": CommandInfo("admin", "cache_app"),
    "token": CommandInfo("admin", "token_app"),
}


def _build(name: str, output_flags: list) -> typer.core.TyperCommand | TyperGroup:
    """The click command (or group) `name`, built from its module; it takes the output flags too."""
    info = COMMANDS[name]
    target = getattr(importlib.import_module(f"{__name__}.{info.module}"), info.attribute)
    if not isinstance(target, typer.Typer):
        single = typer.Typer(add_completion=False)
        single.command(name)(target)
        target = single
    command = typer.main.get_command(target)
    for each in [command, *getattr(command, "commands", {}).values()]:
        taken = {opt for param in each.params for opt in param.opts}
        each.params.extend(flag for flag in output_flags if not taken & set(flag.opts))
    return command


class _Commands(Mapping):
    """The top-level commands by name: all of them are listed, each is built on first use.

    click reaches a group's commands only through this mapping (get for the one being
    run, keys for "did you mean", items for help), so a run builds one and help all.
    """

    def __init__(self, output_flags: list):
        self._output_flags = output_flags
        self._built: dict = {}

    def __getitem__(self, name: str):
        if name not in self._built:
            if name not in COMMANDS:
                raise KeyError(name)
            self._built[name] = _build(name, self._output_flags)
        return self._built[name]

    def __setitem__(self, name: str, command) -> None:  # TyperGroup.add_command
        self._built[name] = command

    def __iter__(self) -> Iterator[str]:
        return iter({**dict.fromkeys(COMMANDS), **self._built})

    def __len__(self) -> int:
        return len(COMMANDS.keys() | self._built.keys())


class _LazyGroup(TyperGroup):
    """The `imstore` group: global options, then one command built from COMMANDS."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        after = _after_command_params()
        self.commands = _Commands([_hidden_copy(param) for param in self.params if param.name in after])


app = typer.Typer(
    name="imstore",
    cls=_LazyGroup,
    help="An immutable, versioned, content-addressed store.\n\n"
    "Every put appends a new version; nothing written is ever changed; every read is verified.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.callback()(global_options)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the CLI and exit with the documented code."""
    code = run(argv)
    # At exit the interpreter runs a last collection over every object of every module, ~12 ms
    # here (a seventh of `imstore get`) spent freeing memory the process is about to hand back.
    # Frozen objects are skipped; stores are closed, output flushed and atexit still runs by now.
    gc.freeze()
    sys.exit(code)


def run(argv: list[str] | None = None) -> int:
    """Run the CLI on argv; return the exit code (for tests and main)."""
    settings.reset(Output())
    try:
        result = typer.main.get_command(app).main(list(sys.argv[1:] if argv is None else argv), prog_name="imstore", standalone_mode=False)
    except (Exception, KeyboardInterrupt) as exc:
        return exit_code_for(exc)
    return result if isinstance(result, int) else EXIT_OK


def exit_code_for(exc: BaseException) -> int:
    """The one place that maps an exception to an exit code; it also says on stderr what went wrong."""
    out = settings.out
    if isinstance(exc, Exit):
        return exc.exit_code
    if isinstance(exc, (Abort, KeyboardInterrupt)):
        out.error("interrupted")
        return EXIT_INTERRUPTED
    if isinstance(exc, NoArgsIsHelpError):
        # No command is a usage error: the help says what to give, and a script sees it failed.
        print(exc.format_message())
        return EXIT_USAGE
    if isinstance(exc, ClickUsageError):
        command_path = exc.ctx.command_path if exc.ctx else "imstore"  # "imstore token create", not "imstore create"
        out.error(f"{exc.format_message()} (see: {command_path} --help)")
        return EXIT_USAGE
    if isinstance(exc, BrokenPipeError):
        # The reader went away (e.g. `| head`): stop quietly, as cat does.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return EXIT_ERROR
    if settings.debug:
        traceback.print_exception(exc)
    if isinstance(exc, ImstoreError):
        out.error(str(exc) or exc.title)
        return exc.exit_code
    # A bug of ours: say so plainly, traceback with --debug.
    out.error(f"unexpected {type(exc).__name__}: {exc} (rerun with --debug for a traceback)")
    return EXIT_ERROR
