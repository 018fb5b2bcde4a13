"""The imstore command line: thin commands over the Store API.

Each command parses its options, makes one library call and hands the result to
`Output`. The commands live by topic: keys.py (init, put, get, cat, history, ls,
rm, log, verify, reindex), batch.py (import, export, repack) and admin.py (cache,
serve, token); common.py holds what they share. Exceptions become exit codes in
exactly one place, `run()`.
"""

# No `from __future__ import annotations` here: typer would eval every string
# annotation on each start, which is most of `imstore get`'s start-up time.
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from .. import __version__
from ..errors import ImstoreError
from ..output import Output

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

app = typer.Typer(
    name="imstore",
    help="An immutable, versioned, content-addressed store.\n\n"
    "Every put appends a new version; nothing written is ever changed; every read is verified.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


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


settings = Settings(out=Output())



def _version_callback(value: bool) -> None:
    if value:
        print(f"imstore {__version__}")
        raise typer.Exit()


@app.callback()
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
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON document (or JSON lines) on stdout.")] = False,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="Print only what was asked for, no chatter.")] = False,
    no_color: Annotated[bool, typer.Option("--no-color", help="No colour (NO_COLOR is honoured too).")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show a traceback on errors.")] = False,
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
    version: Annotated[
        bool, typer.Option("--version", callback=_version_callback, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """An immutable, versioned, content-addressed store.

    Every put appends a new version; nothing written is ever changed; every read is verified.
    """
    settings.store = store
    settings.debug = debug
    settings.cache_dir, settings.cache_size, settings.no_cache = cache_dir, cache_size, no_cache
    settings.remote = remote
    settings.token_file = token_file
    settings.out.json = json_output
    settings.out.quiet = quiet
    settings.out.color = settings.out.color and not no_color



# The commands register themselves on `app` as their modules are imported (in --help's order).
from . import keys, batch, admin  # noqa: E402, F401, I001


# ============================================================ entry point
_OUTPUT_FLAGS = {"--json", "-q", "--quiet", "--no-color", "--debug"}


def _build_command(argv: list[str]):
    """The click command for this invocation, building only the subcommand it names.

    typer inspects every command's signature to build a group; a one-command group
    keeps start-up flat as commands are added. Top-level help sees them all.
    """
    import copy

    names = {info.name or info.callback.__name__ for info in app.registered_commands}
    wanted = _command_name(argv)
    if wanted in names:
        slim = copy.copy(app)
        slim.registered_commands = [info for info in app.registered_commands if (info.name or info.callback.__name__) == wanted]
        slim.registered_groups = []
        return typer.main.get_command(slim)
    if wanted in {info.name for info in app.registered_groups}:
        slim = copy.copy(app)
        slim.registered_commands = []
        slim.registered_groups = [info for info in app.registered_groups if info.name == wanted]
        return typer.main.get_command(slim)
    return typer.main.get_command(app)


_GLOBAL_VALUE_OPTIONS = {"--store", "--cache-dir", "--cache-size", "--remote", "--token-file"}


def _command_name(argv: list[str]) -> str | None:
    skip_next = False
    for arg in argv:
        if skip_next:
            skip_next = False
        elif arg in _GLOBAL_VALUE_OPTIONS:
            skip_next = True
        elif not arg.startswith("-"):
            return arg
        elif arg == "--":
            return None
    return None


def _hoist_output_flags(argv: list[str], command) -> list[str]:
    """Let output flags stand after the command name too (`imstore ls --json`)."""
    takes_value = set()
    for sub in [command, *getattr(command, "commands", {}).values()]:
        for param in sub.params:
            if getattr(param, "is_flag", False) or param.param_type_name != "option":
                continue
            takes_value.update(param.opts)
    hoisted, rest = [], []
    skip_next = False
    for position, arg in enumerate(argv):
        if arg == "--":
            rest.extend(argv[position:])
            break
        if skip_next:
            rest.append(arg)
            skip_next = False
        elif arg in _OUTPUT_FLAGS:
            hoisted.append(arg)
        else:
            rest.append(arg)
            skip_next = arg in takes_value
    return hoisted + rest


def exit_code_for(exc: BaseException) -> int:
    """The one place that maps an exception to an exit code."""
    if isinstance(exc, ImstoreError):
        return exc.exit_code
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    return EXIT_ERROR


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the CLI and exit with the documented code."""
    sys.exit(run(argv))


def run(argv: list[str] | None = None) -> int:
    """Run the CLI on argv; return the exit code (for tests and main)."""
    from typer._click.exceptions import NoArgsIsHelpError
    from typer._click.exceptions import UsageError as ClickUsageError
    from typer.exceptions import Abort, Exit

    args = list(sys.argv[1:] if argv is None else argv)
    settings.reset(Output())
    out = settings.out
    try:
        command = _build_command(args)
        result = command.main(_hoist_output_flags(args, command), prog_name="imstore", standalone_mode=False)
        return result if isinstance(result, int) else EXIT_OK
    except Exit as exc:
        return exc.exit_code
    except Abort:
        out.error("interrupted")
        return EXIT_INTERRUPTED
    except NoArgsIsHelpError as exc:
        print(exc.format_message())
        return EXIT_OK
    except ClickUsageError as exc:
        hint = f" (see: imstore {exc.ctx.info_name if exc.ctx and exc.ctx.parent else ''} --help)".replace("  ", " ")
        out.error(exc.format_message() + hint)
        return EXIT_USAGE
    except ImstoreError as exc:
        if settings.debug:
            import traceback

            traceback.print_exc()
        out.error(str(exc) or exc.title)
        return exc.exit_code
    except KeyboardInterrupt:
        out.error("interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): stop quietly, as cat does.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return EXIT_ERROR
    except Exception as exc:  # a bug of ours: say so plainly, traceback with --debug
        if settings.debug:
            import traceback

            traceback.print_exc()
        out.error(f"unexpected {type(exc).__name__}: {exc} (rerun with --debug for a traceback)")
        return EXIT_ERROR
