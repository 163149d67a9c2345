"""`turnout COMMAND ...`: a table from command name to (help, add_arguments, run); bad input exits 2 in one line."""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from turnout.backend.spec import TargetError
from turnout.cli import demo, export, generate, parity, qualify, report, sdc_coverage, serve, targets, train
from turnout.config import ConfigError
from turnout.data import DataError
from turnout.errors import CheckpointError

# name -> (one-line help, add_arguments(parser), run(args) -> exit code)
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {
    "targets": (targets.HELP, targets.add_arguments, targets.run),
    "train": (train.HELP, train.add_arguments, train.run),
    "report": (report.HELP, report.add_arguments, report.run),
    "qualify": (qualify.HELP, qualify.add_arguments, qualify.run),
    "sdc-coverage": (sdc_coverage.HELP, sdc_coverage.add_arguments, sdc_coverage.run),
    "export": (export.HELP, export.add_arguments, export.run),
    "generate": (generate.HELP, generate.add_arguments, generate.run),
    "serve": (serve.HELP, serve.add_arguments, serve.run),
    "parity": (parity.HELP, parity.add_arguments, parity.run),
    "demo": (demo.HELP, demo.add_arguments, demo.run),
}

# Errors that mean "your input is wrong": one line on stderr, exit code 2, no traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (ConfigError, TargetError, DataError, CheckpointError)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own usage errors: one line, exit 2
        self.exit(2, f"turnout: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="turnout", description="Qualify, train, heal, fail over and serve DeepSeek-V3-style "
                     "models on accelerators you cannot fully trust yet.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, (help_, add, _) in COMMANDS.items():
        add(sub.add_parser(name, help=help_, description=help_))
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    try:
        return int(COMMANDS[args.command][2](args) or 0)
    except USER_ERRORS as e:
        print(f"turnout {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"turnout {args.command}: interrupted", file=sys.stderr)
        return 130

