"""`turnout report RUN`: rebuild a run's self-contained HTML report from the files in its folder."""

from __future__ import annotations

import argparse

from turnout.config import ConfigError
from turnout.report.rundir import RunDir

HELP = "rebuild RUN/report.html (loss and held-out loss, lr, grad norms, tokens/s, MFU, expert load, events)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="run folder written by `turnout train`")


def run(args: argparse.Namespace) -> int:
    from turnout.report.run_page import write_run_report  # matplotlib loads only when a page is drawn

    run = RunDir(args.run)
    if not run.exists():
        raise ConfigError(f"{run.root}: not a run folder (no {run.metrics.name} or {run.events.name})")
    print(write_run_report(run.root))
    return 0
