"""The training step with product checksums on vs off, in one process, and the share that goes to the checks.

    python bench/checksums_overhead.py [--config configs/tiny.toml] [--target cpu] [--iters 8]

Both sides build the same model from the same seed and run `StepRunner.compute` (forward + backward over one
global batch) on the same batch; runs alternate so machine-load drift hits both alike; medians are reported.
The checks' own time is the difference. Prints the machine so the figure names where it ran.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from turnout.config import load_config
from turnout.train.build import build_model


def machine() -> str:
    """The CPU model from /proc/cpuinfo (the figure depends on it), else what Python knows."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        import platform
        return platform.processor() or platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/tiny.toml")
    ap.add_argument("--target", default="cpu")
    ap.add_argument("--iters", type=int, default=8)
    a = ap.parse_args()
    runs = {}
    for on in (False, True):
        cfg = load_config(a.config, [f"health.checksums={str(on).lower()}"])
        runs[on] = build_model(cfg, a.target)
    t = cfg.train
    torch.manual_seed(0)
    x = torch.randint(0, runs[True].args.vocab_size, (t.batch_size, t.seq_len))
    y = torch.randint(0, runs[True].args.vocab_size, (t.batch_size, t.seq_len))
    times: dict[bool, list[float]] = {False: [], True: []}
    for i in range(a.iters + 1):
        for on in (False, True):
            b = runs[on]
            t0 = time.perf_counter()
            r = b.runner.compute([(x, y)])
            b.backend.synchronize()
            if i:  # the first round warms up
                times[on].append(time.perf_counter() - t0)
    off, on = statistics.median(times[False]), statistics.median(times[True])
    checked = len(r.checks) if r.checks is not None else 0
    print(f"machine: {machine()}, {torch.get_num_threads()} threads; "
          f"target {a.target}; {a.config}; {checked} products checked per step, unchecked: {dict(r.checks.unchecked)}")
    print(f"step (forward+backward): checksums off {off * 1e3:.1f} ms, on {on * 1e3:.1f} ms; "
          f"overhead {on / off - 1:.1%}; checks' share of the checked step {(on - off) / on:.1%}")


if __name__ == "__main__":
    main()
