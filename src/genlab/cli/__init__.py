"""The ``genlab`` command: train | sample | reconstruct | eval | analyze | summary | report | sweep |
data | detect | presets.

The command groups live one module each (train, models, data, analyze, compare, detect); they parse
and print, and the work is done by :mod:`genlab.api` and the library below it. A group is imported
only for its own command, so `genlab --help` and `--version` answer at once (without torch).

Bad input (a wrong path, an unknown key, a checkpoint of another model) ends with one line on
stderr naming what and where, and exit code 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import threading

import genlab
from genlab.cli.common import COMMANDS, FORMAT
from genlab.errors import GenlabError

log = logging.getLogger("genlab")

MAIN_EXAMPLES = """\
examples:
  genlab presets                                   list the shipped presets
  genlab train quickstart                          train the quickstart VAE on the embedded digits
  genlab sample runs/00000-quickstart-digits --n 64 --out grid.png
  genlab reconstruct runs/00000-quickstart-digits --n 16
"""


def _command_in(argv: list[str]) -> str | None:
    """The command word of a command line (the first word that is not an option)."""
    return next((a for a in argv if not a.startswith("-")), None)


def _group(command: str):
    """The module of a command's group, imported now (importlib: a deferred import, so the commands not
    run cost nothing)."""
    return importlib.import_module(f"genlab.cli.{COMMANDS[command][0]}")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser: ``command``'s group in full, every other command as its one-line entry."""
    parser = argparse.ArgumentParser(
        prog="genlab", description="Train, evaluate and compare deep generative image models.",
        epilog=MAIN_EXAMPLES, formatter_class=FORMAT)
    parser.add_argument("--version", action="version", version=f"genlab {genlab.__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    full = COMMANDS[command][0] if command in COMMANDS else None
    if full is not None:
        _group(command).add_parsers(sub)
    for name, (group, text) in COMMANDS.items():
        if group != full:
            sub.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".", add_help=False)
    return parser


class _ConsoleHandler(logging.Handler):
    """Log lines on stderr, printed above the progress bar rather than through it."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm  # deferred: tqdm is only needed once a command logs (not for --help)

        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:
            self.handleError(record)


def _setup_console_logging() -> None:
    log.setLevel(logging.INFO)
    if not any(isinstance(h, _ConsoleHandler) for h in log.handlers):
        handler = _ConsoleHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        if int(os.environ.get("RANK", "0")) > 0:  # under torchrun, rank 0 speaks; others only warn
            handler.setLevel(logging.WARNING)
        log.addHandler(handler)
    log.propagate = False


_DEFAULT_THREAD_HOOK = threading.excepthook


def _quiet_thread_os_errors(args) -> None:
    """A background writer (TensorBoard's) that hits a full disk must not print a traceback: the main
    thread reports the same failure as one line when it next writes."""
    if not issubclass(args.exc_type, OSError):
        _DEFAULT_THREAD_HOOK(args)


def main(argv: list[str] | None = None) -> int:
    threading.excepthook = _quiet_thread_os_errors
    argv = list(sys.argv[1:] if argv is None else argv)
    command = _command_in(argv)
    parser = build_parser(command)
    # key=value overrides may stand anywhere on the line, also after options such as --root DIR.
    args, extra = parser.parse_known_args(argv)
    stray = [a for a in extra if a.startswith("-") or "=" not in a]
    if stray or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
    if extra:
        args.overrides = list(args.overrides) + extra
    args.argv = argv
    if args.command is None:
        parser.print_help()
        return 2
    _setup_console_logging()
    debug = args.debug
    try:
        return getattr(_group(args.command), f"cmd_{args.command}")(args)
    except GenlabError as e:
        if debug:
            raise
        print(f"genlab: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("genlab: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`genlab presets | head -3`): stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        return 141
    except OSError as e:  # a full disk, a folder without permission: name the file, no traceback
        if debug:
            raise
        where = f" {e.filename}" if e.filename else ""
        print(f"genlab: error: cannot access{where}: {e.strerror or e}", file=sys.stderr)
        return 2
