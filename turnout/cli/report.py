"""`turnout report RUN`: rebuild a run's self-contained HTML report from the files in its folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from turnout.config import ConfigError

HELP = "rebuild RUN/report.html (loss and held-out loss, lr, grad norms, tokens/s, MFU, expert load, events)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="run folder written by `turnout train`")


def run(args: argparse.Namespace) -> int:
    from turnout.train.report import write_report

    run_dir = Path(args.run)
    if not run_dir.is_dir() or not ((run_dir / "metrics.jsonl").is_file() or (run_dir / "events.jsonl").is_file()):
        raise ConfigError(f"{run_dir}: not a run folder (no metrics.jsonl or events.jsonl)")
    print(write_report(run_dir))
    return 0
