"""`turnout supervise`: run a training script turnout does not own, failing it over between targets."""

from __future__ import annotations

import argparse

from turnout.config import ConfigError

HELP = ("run a training script (one that uses turnout's Guard) under failover: [--target SPEC] [--fallback SPEC ...] "
        "[--run DIR] -- COMMAND ...")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", metavar="SPEC", help="the first target (default: $TURNOUT_TARGET, or the first "
                   "present accelerator); the script reads it from $TURNOUT_TARGET")
    p.add_argument("--fallback", action="append", default=[], metavar="SPEC[,SPEC...]",
                   help="targets to move to, in order, when the script stops trusting its target or hangs")
    p.add_argument("--run", default=None, metavar="DIR",
                   help="the script's run folder (its Guard's run_dir): why it stopped is read from its events, "
                   "and the supervisor's decisions are added to them")
    p.add_argument("--max-restarts", type=int, default=3, metavar="N",
                   help="restarts of a script that crashed on one target before failing over")
    p.add_argument("script", nargs=argparse.REMAINDER, metavar="-- COMMAND ...",
                   help="the script to run, after --, e.g. -- python train.py --out runs/x")


def run(args: argparse.Namespace) -> int:
    from turnout.backend.registry import default_spec
    from turnout.failover.foreign import ScriptSupervisor

    command = args.script[1:] if args.script[:1] == ["--"] else args.script
    if not command:
        raise ConfigError("no command to run; give it after --, e.g. turnout supervise --fallback cpu -- "
                          "python train.py")
    if args.max_restarts < 0:
        raise ConfigError(f"--max-restarts: must be at least 0, got {args.max_restarts}")
    fallback = [t.strip() for item in args.fallback for t in item.split(",") if t.strip()]
    targets = [args.target or default_spec(), *fallback]
    return ScriptSupervisor(command, targets, run_dir=args.run, max_restarts=args.max_restarts).run()
