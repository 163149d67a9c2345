"""`turnout train`: train (or resume) a run on a target, one process or several through torchrun."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from turnout import atomic
from turnout.config import ConfigError, load_config
from turnout.errors import TargetError
from turnout.report.rundir import RunDir

HELP = "train a model: --config FILE --out RUN [--target SPEC] [--set section.key=value] [--resume] [--nproc N]"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="TOML config (default: RUN/config.toml when resuming, else configs' defaults)")
    p.add_argument("--out", required=True, help="run folder: metrics, events, checkpoints, report")
    p.add_argument("--target", help="where to train (default: $TURNOUT_TARGET, the resumed checkpoint's target, "
                   "or the first present accelerator)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a config value")
    p.add_argument("--init", default=None, metavar="PATH", help="start from a trained model: an HF DeepseekV3 "
                   "directory or a turnout run/checkpoint folder (its architecture, weights and tokenizer; a fresh "
                   "optimizer and schedule); the same as --set model.init=PATH")
    p.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint in --out")
    p.add_argument("--until", type=int, default=None, metavar="STEP",
                   help="stop (checkpointed) after this step; the schedule still spans train.steps")
    p.add_argument("--nproc", type=int, default=1, help="processes (ranks) on this machine, started through torchrun")
    p.add_argument("--fallback", action="append", default=[], metavar="SPEC[,SPEC...]",
                   help="targets to fail over to, in order, when --target stops being trusted (runs a supervisor)")
    p.add_argument("--max-restarts", type=int, default=3,
                   help="with --fallback: restarts of a worker that died on one target before failing over")
    p.add_argument("--sample", default="", metavar="PROMPT", help="print a generated continuation of PROMPT at the end")


def _config_for(args: argparse.Namespace):
    run = RunDir(args.out)
    path = args.config
    if path is None and args.resume and run.config.is_file():
        path = run.config
    overrides = list(args.set)
    if args.init is not None:  # absolute, so a worker or a later --resume from elsewhere finds it; JSON is TOML here
        init = str(Path(args.init).expanduser().resolve()) if args.init else ""
        overrides.append("model.init=" + json.dumps(init, ensure_ascii=False))
    config = load_config(path, overrides)
    if config.health.reference:  # it arbitrates suspect steps: a spec that does not build would stop the run then
        from turnout.backend import get_backend

        try:
            get_backend(config.health.reference)
        except TargetError as e:
            raise ConfigError(f"health.reference: {e}") from None
    return config


def _supervise(args: argparse.Namespace, config, fallback: list[str]) -> int:
    """--fallback: this process becomes the supervisor; workers train and it moves the run between targets."""
    from turnout.backend import default_spec, get_backend
    from turnout.ckpt import list_checkpoints
    from turnout.config import to_toml
    from turnout.failover import Supervisor

    targets = [args.target or default_spec(), *fallback]
    for t in targets:  # a bad spec, or a sim profile that is missing or does not load, is a one-line error now,
        get_backend(t)  # not at failover time hours into the run (building a backend probes nothing)
    run_dir = Path(args.out)
    if not args.resume and list_checkpoints(run_dir):
        raise ConfigError(f"--out {run_dir}: this run already has checkpoints; pass --resume to continue it or "
                          f"choose another folder")
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg_path = RunDir(run_dir).config
    atomic.write_text(cfg_path, to_toml(config))
    sup = Supervisor(config, cfg_path, run_dir, targets, nproc=args.nproc, max_restarts=args.max_restarts,
                     until=args.until)
    code = sup.run()
    if code == 0:
        from turnout.report.run_data import summarize_run

        s = summarize_run(run_dir)
        print(f"supervisor: run complete: {s.get('steps')} steps on {' -> '.join(s.get('targets') or targets)}; "
              f"run folder {run_dir}")
    return code


def run(args: argparse.Namespace) -> int:
    if args.nproc < 1:
        raise ConfigError(f"--nproc: expected an integer >= 1, got {args.nproc}")
    if args.resume and not RunDir(args.out).exists():
        raise ConfigError(f"--resume: {args.out} holds no run to resume (no metrics or events); leave out --resume "
                          f"to start one there")
    config = _config_for(args)  # validate before starting any process
    if config.train.expert_parallel > 1:  # a layout that cannot work fails here, before any rank starts
        from turnout.train.build import layout_problem, model_args

        world = args.nproc if args.nproc > 1 else int(os.environ.get("WORLD_SIZE", "1"))  # a rank: torchrun's
        problem = layout_problem(config, world, model_args(config))
        if problem:
            raise ConfigError(problem)
    fallback = [t.strip() for item in args.fallback for t in item.split(",") if t.strip()]
    if fallback:
        return _supervise(args, config, fallback)
    if args.nproc > 1:
        from turnout.train.launch import relaunch

        return relaunch(args.nproc)
    from turnout.ckpt import latest_checkpoint, read_manifest
    from turnout.train import train
    from turnout.failover.worker import SUPERVISED_ENV
    from turnout.train.dist import shutdown_distributed
    from turnout.train.health import EXIT_UNRECOVERABLE, EXIT_UNTRUSTED, RunUnrecoverable, TargetUntrusted
    from turnout.train.interrupt import Interrupted

    target = args.target
    if target is None and args.resume and not os.environ.get("TURNOUT_TARGET"):
        folder = latest_checkpoint(Path(args.out))
        target = read_manifest(folder).target if folder else None
    try:
        result = train(config, target, args.out, resume=args.resume, until=args.until)
    except TargetUntrusted as e:  # every rank decides alike (losses and norms are all-reduced): rank 0 says it
        if int(os.environ.get("RANK", "0")) == 0:
            advice = ("the supervisor moves the run" if os.environ.get(SUPERVISED_ENV) else
                      "resume elsewhere with --resume --target SPEC, or train with --fallback")
            print(f"turnout train: {target or 'the target'} is no longer trusted: {e}; {advice}", file=sys.stderr)
        return EXIT_UNTRUSTED
    except RunUnrecoverable as e:
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"turnout train: cannot continue: {e}", file=sys.stderr)
        return EXIT_UNRECOVERABLE
    except Interrupted as e:  # SIGTERM / SIGINT: checkpointed at a step boundary, the report written
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"turnout train: {e}", file=sys.stderr)
        return e.code
    finally:  # this process owns the rank: leave the group before exiting (gloo's threads abort a live one)
        shutdown_distributed()
    if args.sample and int(os.environ.get("RANK", "0")) == 0:
        from turnout.ckpt.restore import load_model
        from turnout.data import Tokenizer
        from turnout.backend import get_backend
        from turnout.train.sample import sample_text

        model, _, folder = load_model(args.out)
        text = sample_text(model, Tokenizer.load(folder / "tokenizer.json"), get_backend("cpu"), args.sample)
        print(f"sample: {args.sample}{text}")
    if int(os.environ.get("RANK", "0")) == 0:
        if result.already_complete:
            print(f"already complete: {result.step} steps on {result.target}; nothing to train (raise train.steps "
                  f"to go on); run folder {result.run_dir}")
        else:
            print(f"done: {result.step} steps on {result.target}; loss {result.final_loss:.4f}, held-out "
                  f"{result.val_loss:.4f}; run folder {result.run_dir}")
    return 0
