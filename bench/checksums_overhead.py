"""The training step with checksums on vs off, in one process, and the share that goes to the checks.

    python bench/checksums_overhead.py [--config configs/tiny.toml] [--target cpu] [--iters 8]

Both sides build the same model from the same seed and run the step's compute (`StepRunner.compute`: forward +
backward over one global batch, every product checked) and its apply (`StepRunner.apply`: AdamW, checked by a
second evaluation) on the same batch; runs alternate so machine-load drift hits both alike; medians are
reported, for the whole step and for the optimizer step alone. A third side runs the unchecked step under a
dispatch mode that only passes every op through: the cost of intercepting the ops at all, which is the floor
of any check that sees the aten products a step becomes (as the checksums must). Prints the machine so the
figure names where it ran.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from turnout.config import load_config
from turnout.train.build import build_model


class PassThrough(TorchDispatchMode):
    """Intercepts every op and runs it unchanged: what a dispatch mode costs before it checks anything."""

    ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        PassThrough.ops += 1
        return func(*args, **(kwargs or {}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/tiny.toml")
    ap.add_argument("--target", default="cpu")
    ap.add_argument("--iters", type=int, default=8)
    a = ap.parse_args()
    runs = {}
    for on in (False, True, "mode"):
        cfg = load_config(a.config, [f"health.checksums={str(on is True).lower()}"])
        runs[on] = build_model(cfg, a.target)
    t = cfg.train
    torch.manual_seed(0)
    x = torch.randint(0, runs[True].args.vocab_size, (t.batch_size, t.seq_len))
    y = torch.randint(0, runs[True].args.vocab_size, (t.batch_size, t.seq_len))
    times: dict = {False: [], True: [], "mode": []}
    opt: dict = {False: [], True: [], "mode": []}
    for i in range(a.iters + 1):
        for on in (False, True, "mode"):
            b = runs[on]
            t0 = time.perf_counter()
            if on == "mode":
                with PassThrough():
                    r = b.runner.compute([(x, y)])
            else:
                r = b.runner.compute([(x, y)])
            t1 = time.perf_counter()
            b.runner.apply(r, t.lr)
            b.backend.synchronize()
            if i:  # the first round warms up
                times[on].append(time.perf_counter() - t0)
                opt[on].append(time.perf_counter() - t1)
    off, on, mode = (statistics.median(times[k]) for k in (False, True, "mode"))
    opt_off, opt_on = statistics.median(opt[False]), statistics.median(opt[True])
    r = runs[True].runner.compute([(x, y)])
    checked = len(r.checks) if r.checks is not None else 0
    print(f"machine: {runs[True].backend.device_name()}, {torch.get_num_threads()} threads; "
          f"target {a.target}; {a.config}; {checked} products checked per step, unchecked: {dict(r.checks.unchecked)}")
    print(f"step (forward, backward, AdamW): checksums off {off * 1e3:.1f} ms, on {on * 1e3:.1f} ms; overhead "
          f"{on / off - 1:.1%}; the checks' share of the checked step {(on - off) / on:.1%}; of it the AdamW "
          f"step {opt_off * 1e3:.1f} ms vs {opt_on * 1e3:.1f} ms")
    print(f"interception alone (a pass-through dispatch mode over the unchecked step's {PassThrough.ops // (a.iters + 1)}"
          f" ops): {mode * 1e3:.1f} ms, {mode / off - 1:+.1%}: the floor of checks that see every aten product")


if __name__ == "__main__":
    main()
