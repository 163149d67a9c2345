"""The AdamW step checked by a second evaluation of every element (health.checksums).

torch's AdamW (foreach) updates each parameter p with gradient g and moments m, v in place:

    m' = b1 m + (1 - b1) g          v' = b2 v + (1 - b2) g^2
    p' = p (1 - lr wd) - lr / c1 * m' / (sqrt(v') / sqrt(c2) + eps)      c1 = 1 - b1^t, c2 = 1 - b2^t

Before the step the check copies p, m and v (one multi-tensor op each); after it, it evaluates the same formulas
again with other kernels (multiply-add and addcdiv instead of lerp and the fused update) and compares, per
tensor, the largest difference with a rounding bound: LAMBDA ulp-scale errors of the tensor's largest terms.
A flip in any element of the written parameters or moments that moves it by more than ~1e-6 of the tensor's
largest value fails the check; smaller flips, and errors in the gradient itself (that is the products' check),
are not its business. Costs three parameter-sized copies while the step runs and about one more AdamW step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from turnout.backend.abft import LAMBDA, unit_roundoff
from turnout.train.dist import local_shard


@dataclass
class _Group:
    params: list[torch.Tensor]
    grads: list[torch.Tensor]
    p0: list[torch.Tensor]
    m0: list[torch.Tensor]
    v0: list[torch.Tensor]
    steps: list[float]
    hp: dict


class AdamWCheck:
    """`before()` saves what the step reads; `after(saved)` gives (names, ratios) for the step just taken, where a
    ratio above 1 (or NaN) is a mismatch; `restore(saved)` puts the parameters and moments back."""

    def __init__(self, optimizer: torch.optim.Optimizer, names: dict[int, str]):
        self.opt = optimizer
        self.names = names  # id(param) -> its name, for messages

    def before(self) -> list[_Group]:
        saved = []
        for g in self.opt.param_groups:
            params = [p for p in g["params"] if p.grad is not None]
            if not params:
                continue
            state = [self.opt.state.get(p, {}) for p in params]
            local = [local_shard(p.detach()) for p in params]
            m0 = [local_shard(s["exp_avg"]).clone() if "exp_avg" in s else torch.zeros_like(p)
                  for s, p in zip(state, local)]
            v0 = [local_shard(s["exp_avg_sq"]).clone() if "exp_avg_sq" in s else torch.zeros_like(p)
                  for s, p in zip(state, local)]
            steps = [float(s["step"]) if "step" in s else 0.0 for s in state]
            saved.append(_Group(params, [local_shard(p.grad) for p in params], torch._foreach_mul(local, 1.0), m0, v0,
                                steps, {k: g[k] for k in ("lr", "betas", "eps", "weight_decay")}))
        return saved

    def after(self, saved: list[_Group]) -> tuple[list[str], torch.Tensor | None]:
        """(what, ratio) per checked tensor: the largest |written - expected| over its bound (ratios as one
        tensor, still on the device)."""
        names: list[str] = []
        ratios: list[torch.Tensor] = []
        for grp in saved:
            lr, (b1, b2), eps, wd = grp.hp["lr"], grp.hp["betas"], grp.hp["eps"], grp.hp["weight_decay"]
            t = grp.steps[0] + 1
            c1, c2 = 1 - b1 ** t, 1 - b2 ** t
            m_e = torch._foreach_mul(grp.m0, b1)
            torch._foreach_add_(m_e, grp.grads, alpha=1 - b1)
            v_e = torch._foreach_mul(grp.v0, b2)
            torch._foreach_addcmul_(v_e, grp.grads, grp.grads, value=1 - b2)
            upd = torch._foreach_sqrt(v_e)  # becomes m_e / (sqrt(v_e) / sqrt(c2) + eps), in place
            torch._foreach_div_(upd, math.sqrt(c2))
            torch._foreach_add_(upd, eps)
            torch._foreach_reciprocal_(upd)
            torch._foreach_mul_(upd, m_e)
            p_e = torch._foreach_mul(grp.p0, 1 - lr * wd)
            torch._foreach_add_(p_e, upd, alpha=-lr / c1)
            state = [self.opt.state[p] for p in grp.params]
            written = {"param": [local_shard(p.detach()) for p in grp.params],
                       "exp_avg": [local_shard(s["exp_avg"]) for s in state],
                       "exp_avg_sq": [local_shard(s["exp_avg_sq"]) for s in state]}
            expected = {"param": p_e, "exp_avg": m_e, "exp_avg_sq": v_e}
            g_max = _amax_abs(grp.grads)
            scale = {"param": _amax_abs(grp.p0) + (lr / c1) * _amax_abs(upd),
                     "exp_avg": _amax_abs(grp.m0) + g_max, "exp_avg_sq": _amax_abs(grp.v0) + g_max * g_max}
            for what in ("param", "exp_avg", "exp_avg_sq"):
                torch._foreach_sub_(expected[what], written[what])  # the expected buffers now hold the differences
                diffs = _amax_abs(expected[what])
                u = unit_roundoff(written[what][0].dtype)
                ratios.append(diffs / (scale[what] * (LAMBDA * 8 * u) + torch.finfo(diffs.dtype).tiny))
                names += [f"{what} of {self.names.get(id(p), '?')}" for p in grp.params]
        return names, (torch.cat(ratios) if ratios else None)

    def restore(self, saved: list[_Group]) -> None:
        """Undo the step: parameters and moments as before it, step counts back by one."""
        for grp in saved:
            torch._foreach_copy_([local_shard(p.detach()) for p in grp.params], grp.p0)
            for p, m, v, t in zip(grp.params, grp.m0, grp.v0, grp.steps):
                s = self.opt.state[p]
                local_shard(s["exp_avg"]).copy_(m)
                local_shard(s["exp_avg_sq"]).copy_(v)
                if torch.is_tensor(s["step"]):
                    s["step"].fill_(t)
                else:
                    s["step"] = t


def _amax_abs(tensors: list[torch.Tensor]) -> torch.Tensor:
    """max |t| per tensor, stacked (NaN where a tensor holds one). aminmax, because _foreach_norm(inf) takes a slow
    per-tensor path on CPU (~10x)."""
    lows, highs = zip(*(torch.aminmax(t) for t in tensors))
    return torch.maximum(-torch.stack(lows), torch.stack(highs))


def mismatches(names: list[str], ratios: torch.Tensor | None) -> list[tuple[str, float]]:
    """The failed checks, read back in one transfer: (what, ratio) with ratio > 1 or NaN."""
    if ratios is None:
        return []
    return [(what, v) for what, v in zip(names, ratios.cpu().tolist()) if not v <= 1.0]
