"""`turnout demo`: the whole story on the embedded default, one stage after another, with progress throughout.

1. what this machine has (`turnout targets`);
2. training starts on the emulated unproven accelerator (sim:flaky) with cpu as fallback: the health monitor
   catches its faults, diagnoses them by re-execution, and the run fails over to cpu and completes;
3. the model is exported as an HF directory and continues a prompt; the run report's path closes it.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

HELP = "run the whole story on the embedded default: targets, train on an unproven chip with failover, export, sample"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/demo", help="folder for everything the demo writes (replaced)")
    p.add_argument("--config", default=None, help="run config (default: configs/demo.toml, or built-in values)")
    p.add_argument("--target", default="sim:flaky", help="the unproven accelerator")
    p.add_argument("--fallback", default="cpu", help="where the run goes when the target is no longer trusted")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a config value")


def _stage(n: int, total: int, title: str) -> float:
    print(f"\n=== {n}/{total} {title}", flush=True)
    return time.time()


def run(args: argparse.Namespace) -> int:
    from turnout.cli.main import main

    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    config = args.config or ("configs/demo.toml" if Path("configs/demo.toml").is_file() else None)
    sets = [x for s in args.set for x in ("--set", s)]
    total, t_start = 3, time.time()

    _stage(1, total, "targets: what this machine has")
    if main(["targets"]) != 0:
        return 1

    _stage(2, total, f"train on {args.target} (unproven) with --fallback {args.fallback}")
    run_dir = out / "run"
    cmd = ["train", "--out", str(run_dir), "--target", args.target, "--fallback", args.fallback, *sets]
    if config:
        cmd[1:1] = ["--config", config]
    code = main(cmd)
    if code != 0:
        print(f"demo: training did not complete (exit {code}); see {run_dir}/events.jsonl")
        return code

    _stage(3, total, "export, and what the model learned")
    main(["export", str(run_dir), "--hf", str(out / "hf")])
    from turnout.backend import get_backend
    from turnout.ckpt.restore import load_model
    from turnout.data import Tokenizer
    from turnout.train.report_data import summarize_run
    from turnout.train.sample import sample_text

    model, _, folder = load_model(run_dir)
    tok = Tokenizer.load(folder / "tokenizer.json")
    for prompt in ("ROMEO:", "To be, or not to be"):
        print(f"--- {prompt}{sample_text(model, tok, get_backend('cpu'), prompt, max_new_tokens=48)}")
    s = summarize_run(run_dir)
    print(f"\ndemo: {s['steps']} steps on {' -> '.join(s['targets'])}, final held-out loss "
          f"{s['final_val_loss']:.3f}, goodput {s['ettr']:.0%}, {len(s['incidents'])} incidents handled; "
          f"{time.time() - t_start:.0f} s in all")
    print(f"report: {(run_dir / 'report.html').resolve()}")
    return 0
