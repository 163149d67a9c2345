"""turnout's serving engine against transformers' `generate` on the same weights: greedy decode speed and cache size.

    python bench/decode_vs_hf.py [--preset tiny] [--batches 1,8] [--prompt-len 32] [--new-tokens 64] [--repeats 3]
                                 [--breakdown]

One random model (seeded, mtp off) is saved with turnout's `save_pretrained` and loaded by both sides. turnout runs
its Engine (continuous batching, absorbed MLA on the latent cache, the target's decode kernels from
`Backend.inference_kernels`, per-token detokenisation included) driven in this thread; HF runs
`DeepseekV3ForCausalLM.generate(do_sample=False)` with each CPU-worthy experts implementation ("grouped_mm" and
"eager"; "batched_mm" is ~35x slower on CPU) and the faster one is compared. Both get the same
random prompts ([batch, prompt_len] ids) and must produce exactly new_tokens tokens (eos ignored / suppressed).

Decode tokens/s = batch x (N - 1) / (t(N) - t(1)): the time of N new tokens minus the time of 1 (prefill and the
first token), so prompt processing cancels out. Each measurement is the median of --repeats interleaved runs.
`--breakdown` profiles one of turnout's decode steps per batch size (torch.profiler, operator self time) and
prints the share spent in matrix products (opshare.MATMULS: mm, bmm, baddbmm, addmm): the part that moves weights, which no
framework overhead saving can remove. It also times the model's decode step with the target's decode kernels
against the ModelArgs defaults (row-major weights, grouped experts): alternating blocks of 10 steps (a block per
model, so each runs with its own weights in cache, as in serving), median over 4 blocks each.
Cache bytes per token: turnout's latent cache formula; HF's from the tensors its cache holds after generate
(transformers 5.x caches DeepseekV3's latent too); and what an expanded per-head K/V cache would need.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402
from opshare import MATMULS, op_times, share  # noqa: E402

from turnout.backend import get_backend  # noqa: E402
from turnout.data import Tokenizer, load_shakespeare  # noqa: E402
from turnout.model import LatentCache, ModelArgs, Transformer, load_pretrained, save_pretrained  # noqa: E402
from turnout.serve import Engine, SamplingParams  # noqa: E402


def ours_runner(model, tokenizer, max_batch: int, context: int):
    engine = Engine(model, tokenizer, get_backend("cpu"), max_batch=max_batch, max_context=context)

    def run(prompts: torch.Tensor, n: int) -> list[list[int]]:
        params = SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True)
        handles = [engine.submit(p.tolist(), params) for p in prompts]
        engine.run()
        return [h.result().token_ids for h in handles]
    return run, engine


def hf_runner(model):
    @torch.inference_mode()
    def run(prompts: torch.Tensor, n: int) -> list[list[int]]:
        out = model.generate(input_ids=prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=n,
                             min_new_tokens=n, do_sample=False, pad_token_id=0)
        return out[:, prompts.shape[1]:].tolist()
    return run


def hf_cache_bytes_per_token(model, prompts: torch.Tensor) -> float:
    with torch.inference_mode():
        out = model.generate(input_ids=prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=2,
                             min_new_tokens=2, do_sample=False, pad_token_id=0, return_dict_in_generate=True)
    cache = out.past_key_values
    total = 0
    for layer in cache.layers:
        for t in (layer.keys, layer.values):
            total += t.numel() * t.element_size()
    B, T = prompts.shape[0], prompts.shape[1] + 1  # the last generated token is not cached
    return total / (B * T)


def matmul_share(engine, args, batch: int, prompt_len: int, steps: int = 20) -> tuple[float, float]:
    """(fraction of operator self time in matrix products, profiled ms per step) over `steps` decode steps of the
    engine's model at `batch` rows."""
    model, cache = engine.model, engine.cache
    rows, pos = list(range(batch)), [prompt_len] * batch
    x = torch.randint(3, args.vocab_size, (batch, 1))
    with torch.inference_mode():
        model(torch.randint(3, args.vocab_size, (batch, prompt_len)), cache=cache, start_pos=0, slots=rows)
        for _ in range(3):
            model(x, cache=cache, start_pos=pos, slots=rows)
        times, total = op_times(lambda: model(x, cache=cache, start_pos=pos, slots=rows), steps)
    return share(times, total, MATMULS.__contains__), total / steps / 1e3


def kernel_gain(model, args, batch: int, prompt_len: int, blocks: int = 4, steps: int = 10) -> tuple[float, float]:
    """(ms per decode step with the model's current kernels, ms with the ModelArgs defaults), in alternating
    blocks of `steps` steps (after one warm-up step per block)."""
    import copy

    default = copy.deepcopy(model).set_kernels(weight_layout="out_in", experts_impl="grouped")
    rows, pos = list(range(batch)), [prompt_len] * batch
    x = torch.randint(3, args.vocab_size, (batch, 1))
    times = {0: [], 1: []}
    with torch.inference_mode():
        caches = []
        for m in (model, default):
            cache = LatentCache(m.args, batch, prompt_len + 1)
            m(torch.randint(3, args.vocab_size, (batch, prompt_len)), cache=cache, start_pos=0, slots=rows)
            caches.append(cache)
        for _ in range(blocks):
            for k, (m, cache) in enumerate(zip((model, default), caches)):
                m(x, cache=cache, start_pos=pos, slots=rows)
                t = time.perf_counter()
                for _ in range(steps):
                    m(x, cache=cache, start_pos=pos, slots=rows)
                times[k].append((time.perf_counter() - t) / steps)
    return statistics.median(times[0]) * 1e3, statistics.median(times[1]) * 1e3


def timed(fn, *args) -> float:
    t = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--batches", default="1,8")
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--hf-impls", default="grouped_mm,eager")
    p.add_argument("--breakdown", action="store_true", help="profile turnout's decode step: matmul share")
    opts = p.parse_args()
    if opts.threads:
        torch.set_num_threads(opts.threads)
    from transformers import DeepseekV3ForCausalLM

    args = ModelArgs.preset(opts.preset, mtp_depth=0)  # HF's DeepseekV3ForCausalLM has no MTP module
    torch.manual_seed(0)
    batches = [int(b) for b in opts.batches.split(",")]
    text = "".join(d.text for d in itertools.islice(load_shakespeare(), 3))
    tokenizer = Tokenizer.train([text], min(args.vocab_size, 4096))
    context = opts.prompt_len + opts.new_tokens + 1
    with tempfile.TemporaryDirectory() as d:
        save_pretrained(Transformer(args), d)
        ours_model = load_pretrained(d).eval()
        hf = {impl: DeepseekV3ForCausalLM.from_pretrained(d, dtype=torch.float32, experts_implementation=impl,
                                                          attn_implementation="sdpa").eval()
              for impl in opts.hf_impls.split(",")}
    ours, engine = ours_runner(ours_model, tokenizer, max(batches), context)
    runners = {"turnout": ours} | {f"hf/{k}": hf_runner(m) for k, m in hf.items()}
    N = opts.new_tokens
    print(f"preset {opts.preset} (mtp off), fp32, prompt {opts.prompt_len} + {N} new tokens, greedy, threads "
          f"{torch.get_num_threads()}, torch {torch.__version__}")
    results = {}
    for B in batches:
        prompts = torch.randint(3, args.vocab_size, (B, opts.prompt_len), generator=torch.Generator().manual_seed(B))
        outs = {k: r(prompts, N) for k, r in runners.items()}  # warm-up, and the tokens to compare
        t1 = {k: [] for k in runners}
        tn = {k: [] for k in runners}
        for _ in range(opts.repeats):
            for k, r in runners.items():
                t1[k].append(timed(r, prompts, 1))
                tn[k].append(timed(r, prompts, N))
        for k in runners:
            a, b = statistics.median(t1[k]), statistics.median(tn[k])
            results[B, k] = (B * (N - 1) / max(b - a, 1e-9), B * N / b, (b - a) / (N - 1) * 1e3)
        ref = outs["turnout"]
        for k in runners:
            if k != "turnout":
                same = sum(x == y for r1, r2 in zip(ref, outs[k]) for x, y in zip(r1, r2))
                results[B, k] += (same / (B * N),)
    print(f"\n{'batch':>5s} {'engine':14s} {'decode tok/s':>12s} {'ms/step':>8s} {'e2e tok/s':>10s} "
          f"{'same tokens':>12s}")
    for (B, k), v in results.items():
        match = f"{v[3]:12.3f}" if len(v) > 3 else f"{'(ref)':>12s}"
        print(f"{B:5d} {k:14s} {v[0]:12.0f} {v[2]:8.2f} {v[1]:10.0f} {match}")
    print()
    for B in batches:
        best = max((results[B, k][0], k) for k in runners if k != "turnout")
        print(f"batch {B}: turnout decodes {results[B, 'turnout'][0] / best[0]:.2f}x as fast as the best HF "
              f"({best[1]}); end to end {results[B, 'turnout'][1] / results[B, best[1]][1]:.2f}x")
    if opts.breakdown:
        for B in batches:
            share, per_step = matmul_share(engine, args, B, opts.prompt_len)
            print(f"batch {B}: turnout's decode step (profiled: {per_step:.2f} ms) spends {share:.0%} of operator "
                  f"time in matrix products")
            ours_ms, default_ms = kernel_gain(engine.model, args, B, opts.prompt_len)
            print(f"batch {B}: decode step {ours_ms:.2f} ms with cpu's decode kernels "
                  f"({engine.backend.inference_kernels()}), {default_ms:.2f} ms with the defaults "
                  f"({default_ms / ours_ms:.2f}x)")
    prompts = torch.randint(3, args.vocab_size, (1, opts.prompt_len))
    hf_bpt = hf_cache_bytes_per_token(next(iter(hf.values())), prompts)
    a = args
    full = a.n_heads * (a.qk_head_dim + a.v_head_dim) * a.n_layers * 4
    print(f"cache bytes per token: turnout {engine.cache_bytes_per_token} ((kv_lora_rank {a.kv_lora_rank} + "
          f"qk_rope_head_dim {a.qk_rope_head_dim}) x {a.n_layers} layers x 4 B); HF's cache after generate holds "
          f"{hf_bpt:.0f}; per-head K/V would take {full} ({full / engine.cache_bytes_per_token:.1f}x)")

if __name__ == "__main__":
    main()
