"""`turnout qualify`: is a target fit to train this model, only to serve it, or not at all? Writes DIR/qualify.json
and DIR/report.html; with --require, the exit code gates CI (0 ok, 1 verdict below the requirement)."""

from __future__ import annotations

import argparse

from turnout.config import ConfigError, load_config
from turnout.report.rundir import QualifyDir

HELP = ("qualify an accelerator target for a model: --target SPEC [--reference SPEC] [--config FILE | --model "
        "hf:DIR] --out DIR [--require train|inference]")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", required=True, help="the target to qualify, e.g. cuda, npu:bf16, sim:flaky, "
                   "sim:path/to/profile.toml")
    p.add_argument("--reference", default="cpu", help="the device the target is judged against (default: cpu); "
                   "every op is also compared with float64 on the CPU")
    p.add_argument("--config", help="TOML config of the model and run to qualify for (default: built-in defaults)")
    p.add_argument("--model", metavar="hf:DIR", help="qualify for a transformers causal LM instead of the configured "
                   "model: a local folder with config.json (Llama, Qwen, Mixtral, DeepseekV3, ...; randomly "
                   "initialised when it has no weights); the config's train section still sets dtype and schedule")
    p.add_argument("--out", required=True, help="folder for qualify.json, report.html and the collectives log")
    p.add_argument("--require", choices=("train", "inference"),
                   help="exit 1 unless the verdict is train-ready (train) or at least inference-only (inference)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a config value")
    p.add_argument("--steps", type=int, default=30, help="training-parity steps (default 30)")
    p.add_argument("--batch-size", type=int, default=None, help="sequences per qualification step "
                   "(default: min(train.batch_size, 2))")
    p.add_argument("--seq-len", type=int, default=None, help="tokens per sequence (default: min(train.seq_len, 64))")
    p.add_argument("--skip-collectives", action="store_true", help="do not run the two-rank collectives check")
    p.add_argument("--collectives-timeout", type=float, default=90.0, metavar="S",
                   help="seconds the two-rank collectives job may take before it counts as a hang (default 90)")
    p.add_argument("--golden", default=None, metavar="DIR", help="folder of golden reference curves "
                   "(default: $TURNOUT_GOLDEN_DIR or ~/.cache/turnout/golden)")
    p.add_argument("--no-golden", action="store_true", help="recompute the reference curve; read and write no "
                   "golden file")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads while qualifying (0: leave "
                   "torch's default; default 1)")
    p.add_argument("--quiet", action="store_true", help="print only the verdict line")


def run(args: argparse.Namespace) -> int:
    from turnout.backend import get_backend
    from turnout.qualify.run import qualify
    from turnout.qualify.verdict import satisfies
    from turnout.qualify.workload import Settings

    target = get_backend(args.target)  # bad spec -> TargetError -> exit 2, before any work
    reference = get_backend(args.reference)
    config = load_config(args.config, args.set)
    if args.collectives_timeout <= 0:
        raise ConfigError(f"--collectives-timeout: expected a number > 0, got {args.collectives_timeout}")
    if args.threads < 0:
        raise ConfigError(f"--threads: expected an integer >= 0, got {args.threads}")
    settings = Settings(steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len,
                        collectives=not args.skip_collectives, collectives_timeout=args.collectives_timeout,
                        golden_dir=args.golden, use_golden=not args.no_golden, threads=args.threads)
    log = (lambda _m: None) if args.quiet else (lambda m: print(m, flush=True))
    result = qualify(config, target, args.out, reference=reference, settings=settings, log=log,
                     config_path=args.config, model=args.model)
    print(f"verdict: {result['verdict']} ({result['target']} against {result['reference']}, "
          f"{result['seconds']:.1f} s); report: {QualifyDir(args.out).report}")
    covers = result.get("covers")
    if covers:
        m = covers["model"]
        print(f"  covers: {m['architecture']} ({m['source']}) in {covers['dtype']} with "
              f"{', '.join(f'{k}={v}' for k, v in covers['kernels'].items())}: {len(covers['ops']['training'])} ops "
              f"in training, {len(covers['ops']['inference'])} in inference")
    for reason in result["reasons"]:
        print(f"  - {reason}")
    if not satisfies(result["verdict"], args.require):
        print(f"turnout qualify: --require {args.require} not met: verdict is {result['verdict']}")
        return 1
    return 0
