"""A user's own loop bare vs under `Guard.step`, in one process: the guard's cost with checksums off, and with them.

    python bench/guard_overhead.py [--model llama|mlp] [--target cpu] [--steps 60] [--grad-clip 1.0]

Four copies of the same model from the same seed train on the same batches: a bare loop (forward, backward,
AdamW, scheduler), a second bare copy (the spread between identical sides, the figure's noise floor), the guarded
loop with health.checksums off (what the guard itself costs: loss and norm reads,
buffer copies, snapshots every 10 steps, the watchdog), and the guarded loop with checksums on (plus every matrix
product verified and the AdamW step checked). Steps alternate between them, each side leading in turn, so
machine-load drift hits all alike; medians per step are reported with the ratios. With --grad-clip the bare loop
clips with clip_grad_norm_ (as most loops do: transformers' Trainer by default) and the guard is given the same
grad_clip, which it applies from the gradient norms its monitor reads anyway. Prints the machine so the figure
names where it ran.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time

import torch
import torch.nn.functional as F

from turnout import Guard


def build(kind: str) -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    if kind == "mlp":
        model = torch.nn.Sequential(torch.nn.Linear(256, 1024), torch.nn.GELU(), torch.nn.Linear(1024, 1024),
                                    torch.nn.GELU(), torch.nn.Linear(1024, 256))
        return model, torch.randn(64, 256)
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig(vocab_size=2048, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                                         num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=256))
    return model, torch.randint(0, 2048, (8, 128))


def loss_of(kind: str):
    if kind == "mlp":
        return lambda m, x: F.mse_loss(m(x), x.flip(-1))
    return lambda m, x: m(input_ids=x, labels=x).loss


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=("llama", "mlp"), default="llama")
    ap.add_argument("--target", default="cpu")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--grad-clip", type=float, default=0.0, help="clip the global gradient norm (0: no clipping)")
    a = ap.parse_args()
    logging.disable(logging.WARNING)
    loss = loss_of(a.model)
    sides = {}
    for name in ("bare", "bare (copy)", "guard", "guard+checksums"):
        model, batch = build(a.model)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
        guard = None if name.startswith("bare") else Guard(
            model, opt, target=a.target, lr_scheduler=sched, grad_clip=a.grad_clip,
            health={"checksums": name.endswith("checksums")})
        sides[name] = (model, opt, sched, guard, batch)
    times: dict[str, list[float]] = {n: [] for n in sides}

    def bare_step(model, opt, sched, batch) -> None:
        opt.zero_grad(set_to_none=True)
        loss(model, batch).backward()
        if a.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), a.grad_clip, foreach=True)
        opt.step()
        sched.step()

    names = list(sides)
    for i in range(a.steps + 3):
        for name in names[i % len(names):] + names[:i % len(names)]:  # each side leads in turn
            model, opt, sched, guard, batch = sides[name]
            t0 = time.perf_counter()
            if guard is None:
                bare_step(model, opt, sched, batch)
            else:
                guard.step(lambda m, b: loss(m, b), batch)
            if i >= 3:  # the first rounds warm up
                times[name].append(time.perf_counter() - t0)
    for *_, guard, _ in sides.values():
        if guard is not None:
            guard.close()
    med = {n: statistics.median(t) for n, t in times.items()}
    params = sum(p.numel() for p in sides["bare"][0].parameters())
    dev = sides["guard"][3].backend.device_name()
    print(f"machine: {dev}, {torch.get_num_threads()} threads; target {a.target}; model {a.model} ({params:,} params); "
          f"{a.steps} steps per side, medians; "
          f"{f'gradients clipped at {a.grad_clip}' if a.grad_clip else 'no gradient clipping'}")
    print(f"bare {med['bare'] * 1e3:.2f} ms/step; a second bare copy {med['bare (copy)'] * 1e3:.2f} ms "
          f"({med['bare (copy)'] / med['bare'] - 1:+.1%}: the spread between identical sides); "
          f"guard {med['guard'] * 1e3:.2f} ms ({med['guard'] / med['bare'] - 1:+.1%}); "
          f"guard + checksums {med['guard+checksums'] * 1e3:.2f} ms ({med['guard+checksums'] / med['bare'] - 1:+.1%})")


if __name__ == "__main__":
    main()
