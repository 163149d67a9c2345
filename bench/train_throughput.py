"""`turnout train`'s step against transformers training the same model, in one process: tokens/s and MFU.

    python bench/train_throughput.py [--preset tiny] [--target cpu] [--batch 8] [--seq 256] [--iters 10]
                                     [--attn-impl blocked] [--norm-impl explicit]

turnout runs its real training step (`Trainer.train_step`: data from the sampler, health monitor, AdamW, router-bias
update, metrics line); transformers' DeepseekV3ForCausalLM gets the same weights (saved by turnout, loaded by HF),
the same batches and AdamW, with its fastest CPU experts implementation. Steps are interleaved so machine-load drift
hits both alike; medians are reported. MFU = analytic FLOPs per token x tokens/s / the target's measured matmul peak
in the compute dtype. turnout's kernels are configs/tiny.toml's (blocked attention, explicit RMSNorm). mtp_depth
is 0 by default because HF's model trains no MTP module (--mtp 1 to include it).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402

from turnout.config import load_config  # noqa: E402
from turnout.model import flops_per_token, save_pretrained  # noqa: E402
from turnout.train.build import build_dataset, build_model  # noqa: E402
from turnout.train.dist import DistInfo  # noqa: E402
from turnout.train.loop import Trainer  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--target", default="cpu")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--mtp", type=int, default=0)
    p.add_argument("--hf-impl", default="grouped_mm")
    p.add_argument("--attn-impl", default="blocked", help="turnout's ModelArgs.attn_impl")
    p.add_argument("--norm-impl", default="explicit", help="turnout's ModelArgs.norm_impl")
    p.add_argument("--checksums", action="store_true", help="keep health.checksums on (HF has nothing like them: "
                   "off by default here; bench/checksums_overhead.py measures their cost)")
    opts = p.parse_args()
    from transformers import DeepseekV3ForCausalLM

    cfg = load_config(None, [f"model.preset='{opts.preset}'", f"model.overrides.mtp_depth={opts.mtp}",
                             f"model.overrides.attn_impl='{opts.attn_impl}'",
                             f"model.overrides.norm_impl='{opts.norm_impl}'",
                             f"train.batch_size={opts.batch}", f"train.seq_len={opts.seq}",
                             f"train.steps={opts.iters + opts.warmup + 1}", "train.warmup_steps=1",
                             "train.eval_interval=0", "ckpt.interval=0", "train.grad_clip=0",
                             f"health.checksums={str(opts.checksums).lower()}"])
    built = build_model(cfg, opts.target, DistInfo())
    dataset = build_dataset(cfg, built.args, DistInfo(), log=None)
    run = Path(tempfile.mkdtemp(prefix="turnout-bench-"))
    trainer = Trainer(cfg, built, dataset, run, log=None)
    backend, dtype = built.backend, built.dtype
    with tempfile.TemporaryDirectory() as d:
        save_pretrained(built.inner, d)
        hf = DeepseekV3ForCausalLM.from_pretrained(d, experts_implementation=opts.hf_impl).to(backend.device())
    hf.train()
    hf_opt = torch.optim.AdamW(hf.parameters(), lr=cfg.train.lr, betas=(0.9, 0.95), weight_decay=0.1, foreach=True)
    hf_sampler = dataset.sampler(opts.seq, cfg.train.seed)

    def hf_step():
        x, y = hf_sampler.next_batch(opts.batch)
        x, y = x.to(backend.device()), y.to(backend.device())
        with backend.autocast(dtype):
            logits = hf(input_ids=x, use_cache=False).logits
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), y.flatten())
        hf_opt.zero_grad(set_to_none=True)
        loss.backward()
        hf_opt.step()
        backend.synchronize()

    def ours_step():
        trainer.train_step()
        backend.synchronize()

    times = {"turnout": [], "transformers": []}
    for i in range(opts.warmup + opts.iters):
        for name, fn in (("turnout", ours_step), ("transformers", hf_step)):
            t0 = time.perf_counter()
            fn()
            if i >= opts.warmup:
                times[name].append(time.perf_counter() - t0)
    peak = backend.matmul_peak(backend.compute_dtype_name(cfg))
    fpt = flops_per_token(built.args, opts.seq)
    tokens = opts.batch * opts.seq
    print(f"{opts.preset} on {backend.name} ({str(dtype).replace('torch.', '')}), batch {opts.batch} x {opts.seq}, "
          f"{built.params / 1e6:.2f}M params ({built.active_params / 1e6:.2f}M active), mtp_depth {opts.mtp}; "
          f"measured matmul peak {peak / 1e9:.0f} GFLOP/s")
    rows = {}
    for name, ts in times.items():
        med = statistics.median(ts)
        tps = tokens / med
        rows[name] = tps
        print(f"  {name:13s} {med * 1e3:8.1f} ms/step  {tps:9,.0f} tok/s  MFU {fpt * tps / peak:6.1%}")
    print(f"  ratio turnout / transformers: {rows['turnout'] / rows['transformers']:.2f}x")


if __name__ == "__main__":
    main()
