"""The `carsweep` command. Thin: parse, call one library function, print, exit.

Each subcommand is a module here with `HELP` (one line), `add_arguments(parser)` and
`run(args) -> int`, optionally `EPILOG` (a line shown after its options); COMMANDS lists them
in the order `--help` shows. Modules import their heavy dependencies (torch, ray) inside
`run`, so `carsweep --help` answers at once.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from carsweep import __version__
from carsweep.errors import (
    UserError,
    describe_environment_error,
    is_environment_error,
    user_message,
)
from carsweep.interrupts import interrupted_words

COMMANDS = (
    "synth",
    "prepare",
    "train",
    "sweep",
    "resume",
    "status",
    "dashboard",
    "analyze",
    "export",
    "predict",
    "settings",
)


class OneLineParser(argparse.ArgumentParser):
    """argparse's own errors (a missing or unknown flag, a value out of range) as one line, as
    every other refusal: its default prints the usage block first."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}; see {self.prog} --help\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="carsweep",
        description="Hyperparameter search for fine-tuning image classifiers "
        "(Ray Tune + Optuna; ASHA, PASHA or median stopping), then explain and export the "
        "best trial.",
    )
    parser.add_argument("--version", action="version", version=f"carsweep {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        module = importlib.import_module(f"carsweep.cli.{name}")
        sub = subparsers.add_parser(name, help=module.HELP, description=module.HELP,
                                    epilog=getattr(module, "EPILOG", None))
        module.add_arguments(sub)
        sub.set_defaults(run=module.run, parser=sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        # Building the parser imports every subcommand's module: a Ctrl-C there is an
        # interrupt as in any later second, not a traceback.
        args, unknown = build_parser().parse_known_args(argv)
    except KeyboardInterrupt:
        print("carsweep: interrupted", file=sys.stderr)
        return 130
    if unknown:  # said by the command's parser, whose --help lists what it takes
        args.parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        code = int(args.run(args) or 0)
        sys.stdout.flush()  # here, not at exit, so a closed pipe is caught below
        return code
    except UserError as error:
        print(f"carsweep {args.command}: error: {user_message(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:
        print(f"carsweep {args.command}: {interrupted_words(interrupt)}", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return _reader_went_away()
    except (OSError, MemoryError) as error:
        if not is_environment_error(error):
            raise  # a bug, or a case nobody foresaw: its traceback is what gets it fixed
        print(f"carsweep {args.command}: error: {describe_environment_error(error)}",
              file=sys.stderr)
        return 2


def _reader_went_away() -> int:
    """`carsweep predict ... | head`: the reader closed the pipe, which is not an error to
    report. Point stdout at /dev/null so Python's exit-time flush does not raise again, and
    exit as a program stopped by SIGPIPE does (128 + 13)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 141
