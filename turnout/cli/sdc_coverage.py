"""`turnout sdc-coverage`: inject single-bit flips into a short run's products, AdamW step and (on several ranks)
gradient reduction, and measure what the checks catch."""

from __future__ import annotations

import argparse
import os
import sys

from turnout import atomic
from turnout.config import ConfigError, load_config
from turnout.report.jsonl import clean
from turnout.report.rundir import CoverageDir

HELP = ("measure the checksums by injection (products, AdamW, and with --nproc the gradient all-reduce): detection "
        "by bit class and op, harmful escapes, false alarms")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="run config (TOML)")
    p.add_argument("--target", default="cpu", help="target spec (default: cpu)")
    p.add_argument("--flips", type=int, default=200, help="single-bit flips to inject (default: 200)")
    p.add_argument("--steps", type=int, default=None, help="training steps to spread them over; each is also a "
                   "clean and a jittered false-alarm sample (default: as many as flips)")
    p.add_argument("--seed", type=int, default=0, help="seed of the flips' steps, calls, elements and bits")
    p.add_argument("--out", required=True, help="folder for sdc-coverage.json and sdc-coverage.html")
    p.add_argument("--nproc", type=int, default=1, help="ranks on this machine (DDP through torchrun); from 2, a "
                   "fifth of the flips go into the gradient all-reduce (default: 1)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value")


def run(args: argparse.Namespace) -> int:
    from turnout.qualify.sdc_coverage import run_campaign
    from turnout.report.coverage_page import write_coverage_report

    if args.nproc < 1:
        raise ConfigError(f"--nproc: expected an integer >= 1, got {args.nproc}")
    if args.flips < 1:
        raise ConfigError(f"--flips: expected a positive count, got {args.flips}")
    steps = args.flips if args.steps is None else args.steps
    if steps < 1:
        raise ConfigError(f"--steps: expected a positive count, got {steps}")
    config = load_config(args.config, args.overrides)
    out = CoverageDir(args.out)
    if out.root.exists() and not out.root.is_dir():
        raise ConfigError(f"--out: {out.root} exists and is not a folder")
    if not config.health.checksums:
        raise ConfigError("health.checksums: the campaign measures the checksums, which this config switches off")
    if args.nproc > 1 and config.train.expert_parallel > 1:
        raise ConfigError("train.expert_parallel: the campaign's ranks run data parallelism only; set it to 1")
    if args.nproc > 1 and config.train.parallel != "ddp":
        raise ConfigError(f"train.parallel: the campaign's ranks run DDP, not {config.train.parallel!r}")
    if args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        from turnout.train.launch import relaunch

        again = ["sdc-coverage", "--config", args.config, "--target", args.target, "--flips", str(args.flips),
                 "--steps", str(steps), "--seed", str(args.seed), "--out", args.out]
        return relaunch(args.nproc, again + [x for o in args.overrides for x in ("--set", o)])
    from turnout.backend import get_backend
    from turnout.train.dist import init_distributed, shutdown_distributed

    target = get_backend(args.target)
    info = init_distributed(target)
    try:
        result = run_campaign(config, target, flips=args.flips, steps=steps, seed=args.seed, info=info,
                              log=(lambda s: print(s, file=sys.stderr)) if info.is_main else None)
    finally:
        shutdown_distributed()
    if not info.is_main:
        return 0
    out.root.mkdir(parents=True, exist_ok=True)
    doc = clean(result)  # plain JSON values: what the file holds and the page reads
    atomic.write_json(out.result, doc)
    page = write_coverage_report(out.root, doc)
    hb = result["high_bits"]
    print(f"{result['detected']}/{result['flips']} flips detected; sign/exponent/top-3 mantissa "
          f"{hb['detected']}/{hb['flips']}; harmful escaped {result['escaped']['harmful']}; "
          f"false alarms {result['false_alarms']['alarms']} on {steps} clean + {steps} jittered steps")
    print(page)
    return 0
