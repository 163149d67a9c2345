"""Training throughput over 4 ranks: data parallelism alone (DP=4) vs expert parallelism beside it (EP=2 x DP=2)
vs experts split over every rank (EP=4), and the token exchange's share of the step.

    python bench/expert_parallel.py [--preset debug] [--steps 12] [--nproc 4] [--batch 8] [--seq 128]

Each layout is one torchrun job of NPROC gloo ranks on this machine running the same model, global batch and
data through turnout's own build (train.build) and step (StepRunner.compute + apply), health checks off: only the
layout differs. Rank 0 reports the median step time after two warm-up steps; the exchange's share is the time
spent inside expert parallelism's all_to_all calls (rows and their counts, forward and backward) over the step
time, the same steps, measured on rank 0. On a CPU host the ranks share its cores, so the figures say what the
layouts cost here, not what they gain on separate devices. Prints the machine so the figures name where they ran.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LAYOUTS = (("DP=4", 1), ("EP=2 x DP=2", 2), ("EP=4", 4))


def worker(a: argparse.Namespace) -> None:
    import torch
    import torch.distributed as dist

    from turnout.backend import get_backend
    from turnout.config import load_config
    from turnout.train.build import build_model
    from turnout.train.dist import init_distributed, shutdown_distributed

    backend = get_backend("cpu")
    info = init_distributed(backend)
    config = load_config(None, [f"model.preset='{a.preset}'", f"train.batch_size={a.batch}",
                                f"train.seq_len={a.seq}", f"train.expert_parallel={a.ep}", "health.enabled=false",
                                "train.grad_clip=1.0"])
    built = build_model(config, backend, info)
    spent = [0.0]
    real_a2a = dist.all_to_all_single

    def timed(fn):
        def run(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[0] += time.perf_counter() - t0
        return run

    dist.all_to_all_single = timed(real_a2a)  # expert parallelism's only collective: the rows and their counts
    gen = torch.Generator().manual_seed(0)
    per_rank = a.batch // info.world_size
    steps, shares = [], []
    for i in range(a.steps + 2):
        x = torch.randint(0, built.args.vocab_size, (a.batch, a.seq + 1), generator=gen)
        mine = x[info.rank * per_rank:(info.rank + 1) * per_rank]
        spent[0] = 0.0
        dist.barrier()
        t0 = time.perf_counter()
        r = built.runner.compute([(mine[:, :-1], mine[:, 1:])])
        built.runner.apply(r, 1e-3)
        dist.barrier()
        dt = time.perf_counter() - t0
        if i >= 2:
            steps.append(dt)
            shares.append(spent[0] / dt)
    dist.all_to_all_single = real_a2a
    if info.is_main:
        Path(a.out).write_text(json.dumps({"step_s": statistics.median(steps), "share": statistics.median(shares),
                                           "tokens": a.batch * a.seq, "params": built.params,
                                           "device": backend.device_name(), "threads": torch.get_num_threads()}))
    shutdown_distributed()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="debug")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--nproc", type=int, default=4)
    p.add_argument("--batch", type=int, default=8, help="global batch in sequences")
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--ep", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--out", default="", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        return worker(a)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, ep in LAYOUTS:
            if a.nproc % ep:
                continue
            out = Path(tmp) / f"ep{ep}.json"
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={a.nproc}",
                   __file__, "--worker", "--ep", str(ep), "--out", str(out), "--preset", a.preset,
                   "--steps", str(a.steps), "--batch", str(a.batch), "--seq", str(a.seq)]
            env = dict(os.environ, OMP_NUM_THREADS=str(max((os.cpu_count() or 1) // a.nproc, 1)),
                       PYTHONWARNINGS="ignore")
            subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            rows.append((name, ep, json.loads(out.read_text())))
    first = rows[0][2]
    print(f"machine: {first['device']}, {os.cpu_count()} cores, {a.nproc} gloo ranks x {first['threads']} "
          f"thread(s); preset {a.preset} ({first['params']:,} params); global batch {a.batch} x {a.seq} tokens; "
          f"{a.steps} steps per layout, medians")
    base = first["tokens"] / first["step_s"]
    print(f"{'layout':<14}{'tokens/s':>10}{'vs DP=4':>9}{'exchange share':>16}")
    for name, ep, r in rows:
        tps = r["tokens"] / r["step_s"]
        share = f"{100 * r['share']:.1f}%" if ep > 1 else "-"
        print(f"{name:<14}{tps:>10.0f}{tps / base:>8.2f}x{share:>16}")


if __name__ == "__main__":
    main()
