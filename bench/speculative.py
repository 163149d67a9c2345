"""Speculative decoding with the MTP drafter against plain decoding, on the same engine and weights, in one run.

    python bench/speculative.py [--model PATH] [--steps 300] [--batches 1,8] [--prompt-len 32] [--new-tokens 64]
                                [--repeats 3] [--target cpu]

A draft is only as good as the MTP module that makes it, so the weights must be trained: `--model` names a run,
checkpoint or HF directory whose model has an MTP module (mtp_depth >= 1); without it the script first trains the
`tiny` preset with mtp_depth=1 on the embedded corpus (`turnout train`, --steps steps of 8 x 128 tokens, about a
minute per 200 steps on 2 CPU cores) into a temporary folder.

Both engines decode the same prompts (cut from the corpus) greedily with eos ignored. Speculation must not change
a single token, which the script checks. Reported per batch size: decode tokens/s (batch x (N - 1) / (t(N) - t(1)),
median of --repeats interleaved runs, as in decode_vs_hf.py), decode steps per token, the fraction of drafts kept,
and the speedup.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from turnout.data import load_shakespeare  # noqa: E402
from turnout.serve import Engine, SamplingParams, load_for_serving  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def train_model(out: Path, steps: int) -> Path:
    cmd = [sys.executable, "-m", "turnout", "train", "--config", str(REPO / "configs/tiny.toml"), "--out", str(out),
           "--target", "cpu", "--set", f"train.steps={steps}", "--set", "train.seq_len=128",
           "--set", "model.overrides.mtp_depth=1", "--set", f"train.warmup_steps={max(steps // 10, 1)}",
           "--set", "train.eval_interval=0", "--set", f"ckpt.interval={steps}"]
    print(f"training tiny (mtp_depth=1) for {steps} steps: {' '.join(cmd[2:])}", flush=True)
    subprocess.run(cmd, check=True, cwd=REPO)
    return out


def prompts(tokenizer, n: int, length: int) -> list[list[int]]:
    text = load_shakespeare()[-1].text
    ids = tokenizer.encode(text[len(text) // 2:])
    step = max((len(ids) - length) // n, 1)
    return [ids[i * step:i * step + length] for i in range(n)]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="a run/checkpoint/HF folder with an MTP module (default: train one)")
    p.add_argument("--steps", type=int, default=300, help="training steps when no --model is given")
    p.add_argument("--batches", default="1,8")
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--target", default="cpu")
    opts = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(opts.model) if opts.model else train_model(Path(tmp) / "run", opts.steps)
        lm = load_for_serving(path, opts.target)
        if lm.model.args.mtp_depth < 1:
            sys.exit(f"{path}: the model has no MTP module (mtp_depth=0); nothing drafts")
        batches = [int(b) for b in opts.batches.split(",")]
        context = opts.prompt_len + opts.new_tokens + 1
        engines = {name: Engine(lm.model, lm.tokenizer, lm.backend, max_batch=max(batches), max_context=context,
                                speculative=(name == "speculative")) for name in ("plain", "speculative")}
        N = opts.new_tokens
        print(f"model {path} ({lm.model.args.dim}-dim, {lm.model.args.n_layers} layers, mtp_depth "
              f"{lm.model.args.mtp_depth}) on {lm.backend.name}, greedy, prompt {opts.prompt_len} + {N} new tokens, "
              f"threads {torch.get_num_threads()}")
        print(f"\n{'batch':>5s} {'engine':12s} {'decode tok/s':>12s} {'steps/token':>12s} {'drafts kept':>12s}")
        for B in batches:
            ps = prompts(lm.tokenizer, B, opts.prompt_len)

            def run(engine: Engine, n: int) -> list[list[int]]:
                params = SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True)
                handles = [engine.submit(q, params) for q in ps]
                engine.run()
                return [h.result().token_ids for h in handles]

            outs = {k: run(e, N) for k, e in engines.items()}
            if outs["speculative"] != outs["plain"]:
                sys.exit(f"batch {B}: speculative decoding changed the tokens - a bug")
            t1 = {k: [] for k in engines}
            tn = {k: [] for k in engines}
            stats = {}
            for _ in range(opts.repeats):
                for k, e in engines.items():
                    t = time.perf_counter()
                    run(e, 1)
                    t1[k].append(time.perf_counter() - t)
                    s0 = (e.stats.decode_steps, e.stats.decode_tokens, e.stats.drafted, e.stats.accepted)
                    t = time.perf_counter()
                    run(e, N)
                    tn[k].append(time.perf_counter() - t)
                    s1 = (e.stats.decode_steps, e.stats.decode_tokens, e.stats.drafted, e.stats.accepted)
                    stats[k] = [b - a for a, b in zip(s0, s1)]
            rate = {}
            for k in engines:
                rate[k] = B * (N - 1) / max(statistics.median(tn[k]) - statistics.median(t1[k]), 1e-9)
                steps, toks, drafted, accepted = stats[k]
                kept = f"{accepted / drafted:12.1%}" if drafted else f"{'-':>12s}"
                print(f"{B:5d} {k:12s} {rate[k]:12.0f} {steps / max(toks / B, 1):12.3f} {kept}")
            print(f"batch {B}: speculative decoding is {rate['speculative'] / rate['plain']:.2f}x plain decoding "
                  f"(identical tokens)")


if __name__ == "__main__":
    main()
