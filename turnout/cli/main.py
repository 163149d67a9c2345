"""`turnout COMMAND ...`: a table from command name to (help, add_arguments, run); bad input exits 2 in one line.

Building the parser imports every command module, so none of them imports torch, numpy, rich or matplotlib at
module level: each loads what it needs inside its `run`, and `turnout --help` answers at once.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from typing import Callable

import turnout
from turnout.cli import config as config_cmd
from turnout.cli import (demo, export, generate, inspect, parity, qualify, report, sdc_coverage, serve, supervise,
                         targets, train)
from turnout.config import ConfigError
from turnout.errors import CheckpointError, DataError, TargetError

# name -> (one-line help, add_arguments(parser), run(args) -> exit code)
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {
    "targets": (targets.HELP, targets.add_arguments, targets.run),
    "config": (config_cmd.HELP, config_cmd.add_arguments, config_cmd.run),
    "train": (train.HELP, train.add_arguments, train.run),
    "report": (report.HELP, report.add_arguments, report.run),
    "qualify": (qualify.HELP, qualify.add_arguments, qualify.run),
    "sdc-coverage": (sdc_coverage.HELP, sdc_coverage.add_arguments, sdc_coverage.run),
    "inspect": (inspect.HELP, inspect.add_arguments, inspect.run),
    "export": (export.HELP, export.add_arguments, export.run),
    "generate": (generate.HELP, generate.add_arguments, generate.run),
    "serve": (serve.HELP, serve.add_arguments, serve.run),
    "parity": (parity.HELP, parity.add_arguments, parity.run),
    "supervise": (supervise.HELP, supervise.add_arguments, supervise.run),
    "demo": (demo.HELP, demo.add_arguments, demo.run),
}

# Errors that mean "your input is wrong": one line on stderr, exit code 2, no traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (ConfigError, TargetError, DataError, CheckpointError)


def _closest(word: str, valid: list[str]) -> str:
    """' (did you mean X?)' for the valid word closest to `word`, or '' when none is close."""
    match = difflib.get_close_matches(word, valid, n=1, cutoff=0.6)
    return f" (did you mean {match[0]}?)" if match else ""


class _Parser(argparse.ArgumentParser):
    """argparse with this command's manners: a usage error is one line on stderr (the problem, the closest valid
    option or command, the usage) and exit 2.

    Unknown options and commands are caught before argparse parses, so a misspelt flag is what the line names
    even when a required option is missing too (argparse would name the missing one and never the misspelling).
    """

    commands: tuple[str, ...] = ()  # set on the top-level parser: the words that name a subcommand

    def parse_known_args(self, args=None, namespace=None):
        args = sys.argv[1:] if args is None else list(args)
        self._check_words(args)
        return super().parse_known_args(args, namespace)

    def _check_words(self, args: list[str]) -> None:
        options = [o for action in self._actions for o in action.option_strings]
        for arg in args:
            if arg == "--":  # everything after it is a value
                return
            if not arg.startswith("-"):
                if self.commands:  # the first word names the command; what follows is its parser's to check
                    if arg not in self.commands:
                        self.error(f"unknown command {arg!r}{_closest(arg, list(self.commands))}; commands: "
                                   f"{', '.join(self.commands)}")
                    return
                continue
            # Only long options are checked: argparse reads '-1' as a value, and an unknown word with a space in
            # it as one too; it accepts '--opt=value' and any unambiguous prefix of an option.
            if not arg.startswith("--") or len(arg) == 2 or " " in arg:
                continue
            name = arg.split("=", 1)[0]
            if not any(o.startswith(name) for o in options):
                self.error(f"unrecognized argument {name}{_closest(name, [o for o in options if o[:2] == '--'])}")

    def error(self, message: str) -> None:
        usage = " ".join(self.format_usage().split())  # argparse wraps a long usage over several lines
        self.exit(2, f"{self.prog}: error: {message}; {usage}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="turnout", description="Qualify, train, heal, fail over and serve DeepSeek-V3-style "
                     "models on accelerators you cannot fully trust yet.")
    parser.commands = tuple(COMMANDS)
    parser.add_argument("--version", action="version", version=f"turnout {turnout.__version__}",
                        help="print turnout's version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser,
                                help="what to do; `turnout COMMAND --help` describes each")
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
        # split() also breaks at every character str.splitlines() does, so a message quoting a user's text with a
        # line break in it still prints as one line
        print(f"turnout {args.command}: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"turnout {args.command}: interrupted", file=sys.stderr)
        return 130
