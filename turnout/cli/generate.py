"""`turnout generate`: continue a prompt on a target, streaming tokens to the terminal as they are decoded."""

from __future__ import annotations

import argparse
import sys
import time

from turnout.config import ConfigError

HELP = ("generate text: --model PATH --prompt TEXT [--target SPEC] [--max-tokens N] [--temperature T] "
        "[--top-k K] [--top-p P] [--seed S] [--stop STR]")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="run folder, checkpoint folder or HF DeepseekV3 directory")
    p.add_argument("--target", default=None, help="where to run (default: $TURNOUT_TARGET or the first accelerator)")
    p.add_argument("--prompt", required=True, help="text to continue ('' starts a new document)")
    p.add_argument("--max-tokens", type=int, default=64, help="new tokens at most (default 64)")
    p.add_argument("--temperature", type=float, default=0.8, help="0 is greedy (default 0.8)")
    p.add_argument("--top-k", type=int, default=0, help="keep the k likeliest tokens; 0: off")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass; 1: off")
    p.add_argument("--seed", type=int, default=None, help="sampling seed (default: random)")
    p.add_argument("--stop", action="append", default=[], metavar="STR", help="stop at this text (repeatable)")
    add_speculative_argument(p)
    p.add_argument("--max-context", type=int, default=None, help="context length (default: the model's)")
    p.add_argument("--quiet", action="store_true", help="print only the continuation, no prompt or summary")


def add_speculative_argument(p: argparse.ArgumentParser) -> None:
    """--speculative, shared by `generate` and `serve`."""
    p.add_argument("--speculative", action="store_true",
                   help="draft one token ahead with the model's MTP module and verify it (same output, fewer steps)")


def build_engine(lm, args: argparse.Namespace, max_batch: int, max_context: int | None):
    """The serving Engine for a loaded model; a ConfigError when --speculative asks for an MTP module it lacks."""
    from turnout.serve import Engine

    if args.speculative and lm.model.args.mtp_depth < 1:
        raise ConfigError(f"--speculative: {args.model} has no MTP module to draft with (mtp_depth=0)")
    return Engine(lm.model, lm.tokenizer, lm.backend, max_batch=max_batch, max_context=max_context,
                  speculative=args.speculative)


def run(args: argparse.Namespace) -> int:
    from turnout.serve import RequestError, SamplingParams, load_for_serving

    params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, top_k=args.top_k,
                            top_p=args.top_p, seed=args.seed, stop=tuple(args.stop))
    problems = params.problems()
    if args.max_tokens == 0:
        problems.insert(0, ("max_tokens", "must be at least 1 (generate writes new tokens; score a prompt "
                                          "through the server's echo with max_tokens 0)"))
    if problems:
        raise ConfigError(f"--{problems[0][0].replace('_', '-')}: {problems[0][1]}")
    lm = load_for_serving(args.model, args.target)
    engine = build_engine(lm, args, max_batch=1, max_context=args.max_context)
    try:
        handle = engine.submit(args.prompt, params)
    except RequestError as e:
        raise ConfigError(f"--{(e.param or 'prompt').replace('_', '-')}: {e}") from None
    if not args.quiet:
        sys.stdout.write(args.prompt)
    t0 = time.perf_counter()
    for ev in handle.events():  # no model thread: reading the handle steps the engine here
        sys.stdout.write(ev.text)
        sys.stdout.flush()
        last = ev
    took = time.perf_counter() - t0
    sys.stdout.write("\n")
    if last.finish_reason == "error":
        print(f"turnout generate: error: generation failed on {lm.backend.name}: {last.error}", file=sys.stderr)
        return 1
    if not args.quiet:
        print(f"[{last.completion_tokens} tokens in {took:.2f} s ({last.completion_tokens / max(took, 1e-9):.1f} "
              f"tok/s) on {lm.backend.name}; finish: {last.finish_reason}; latent cache "
              f"{engine.cache_bytes_per_token} B/token"
              f"{f'; MTP drafts kept {engine.acceptance_rate:.0%}' if engine.acceptance_rate is not None else ''}]",
              file=sys.stderr)
    return 0
