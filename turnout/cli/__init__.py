"""The `turnout` command line: one module per command, dispatched from main.py."""

from turnout.cli.main import main

__all__ = ["main"]
