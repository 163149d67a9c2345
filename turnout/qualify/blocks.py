"""Stage 3, block parity: each decoder block alone, then the whole model's per-layer gradients, on the target and on
the reference, from the same weights and inputs, both judged against a float64 run on the CPU.

Each block gets its real input (the hidden states the model feeds it, captured on the host) and one fixed random
upstream gradient; its output and the gradients of its parameters are compared normwise (numerics.judge_normwise).
A kernel that is subtly wrong in backward shows here even when every op's forward passes. The whole-model pass
(StepRunner.compute on both targets) shows how gradient error accumulates over depth: backprop runs head -> norm ->
MTP -> layers.N-1 ... layers.0 -> embed, so a bad backward kernel hurts the groups late in that order most.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_map_only

from turnout.backend import Backend
from turnout.errors import one_line
from turnout.model.moe import Experts
from turnout.qualify.numerics import judge_normwise, normwise
from turnout.qualify.stage import StageResult, failure_kind
from turnout.qualify.workload import Workload
from turnout.train.step import layer_groups


def _f64(module: nn.Module) -> nn.Module:
    """A float64 copy; grouped experts run as a loop (torch._grouped_mm has no float64 CPU kernel), turnout's and
    transformers' alike."""
    m = copy.deepcopy(module).double()
    for sub in m.modules():
        if isinstance(sub, Experts):
            sub.impl = "loop"
        elif hasattr(sub, "_apply_gate") and hasattr(getattr(sub, "config", None), "_experts_implementation"):
            sub.config._experts_implementation = "eager"  # transformers' pluggable experts (a copy's own config)
    return m


def _detached(v: Any) -> Any:
    """A block argument kept for replay: tensors copied, a KV cache dropped (replays are training forwards)."""
    if isinstance(v, torch.Tensor):
        return v.detach().clone()
    if isinstance(v, (tuple, list)):
        return type(v)(_detached(x) for x in v)
    return None if "Cache" in type(v).__name__ else v


def _capture_inputs(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, tuple]:
    """Inputs (positional, keyword) of every decoder block (layers.i, mtp.k) in one fp32 training forward on the
    host."""
    seen: dict[str, tuple] = {}
    hooks = []
    for prefix, mods in (("layers", model.layers), ("mtp", model.mtp)):
        for i, blk in enumerate(mods):
            def hook(_m, args, kwargs, name=f"{prefix}.{i}"):
                seen[name] = (tuple(_detached(a) for a in args), {k: _detached(v) for k, v in kwargs.items()})
            hooks.append(blk.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        with torch.no_grad():
            model(x, targets=y)
    finally:
        for h in hooks:
            h.remove()
    return seen


def _run_block(block: nn.Module, inputs: tuple, upstream: torch.Tensor, backend: Backend | None,
               dtype: torch.dtype) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(outputs flattened, parameter gradients) of one block; backend None: float64 on the host."""
    if backend is None:
        blk, device = _f64(block), torch.device("cpu")
        move = lambda a: a.double() if a.is_floating_point() else a  # noqa: E731
        ctx, cast = _Null(), _Null()
    else:
        device = backend.device()
        blk = copy.deepcopy(block).to(device)
        move = lambda a: a.to(device)  # noqa: E731
        ctx, cast = backend.compute(), backend.autocast(dtype)
    args, kwargs = tree_map_only(torch.Tensor, move, inputs)
    blk.train()
    xs = list(args)
    xs[0] = xs[0].clone().requires_grad_()
    with ctx:
        with cast:
            out = blk(*xs, **kwargs)
        # a Block returns (h, balance or None), an MTP block (h, norm(h), balance or None): every [B, T, dim]
        # output gets the same upstream gradient, a scalar output (the balance loss) is added as it is
        outs = [t for t in (out if isinstance(out, tuple) else (out,)) if isinstance(t, torch.Tensor)]
        hs = [t for t in outs if t.dim() > 0]
        up = upstream.to(device, torch.float64 if backend is None else upstream.dtype)
        loss = sum((t.to(up.dtype) * up).sum() for t in hs) + sum(t for t in outs if t.dim() == 0)
        loss.backward()
        if backend is not None:
            backend.synchronize()
    grads = {n: p.grad.detach().cpu() for n, p in blk.named_parameters() if p.grad is not None}
    return torch.cat([t.detach().cpu().reshape(-1) for t in hs]), grads


def _flat(grads: dict[str, torch.Tensor], names: list[str]) -> torch.Tensor:
    return torch.cat([grads[n].double().reshape(-1) for n in names]) if names else torch.zeros(0)


def block_parity(work: Workload, target: Backend, reference: Backend, dtype: torch.dtype) -> StageResult:
    """The block-parity stage: per block, then per layer group of the whole model."""
    st = StageResult("blocks", "Block parity")
    model = work.host_model()
    x, y = work.batches[0]
    inputs = _capture_inputs(model, x, y)
    modules = {f"layers.{i}": b for i, b in enumerate(model.layers)} | {f"mtp.{k}": b for k, b in enumerate(model.mtp)}
    gen = torch.Generator().manual_seed(work.config.train.seed + 17)
    rows = []
    for name, blk in modules.items():
        if name not in inputs:
            continue
        up = torch.randn(inputs[name][0][0].shape, generator=gen) * 1e-2  # a gradient of a loss's typical size
        hr, gr = _run_block(blk, inputs[name], up, reference, dtype)  # a failure here is the harness's: raise
        h64, g64 = _run_block(blk, inputs[name], up, None, dtype)
        try:
            ht, gt = _run_block(blk, inputs[name], up, target, dtype)
        except Exception as e:  # noqa: BLE001 - the reference ran it, so this is the target's fault: evidence
            # a missing forward kernel is already named by op conformance; here it costs training at least
            kind = "device_error" if failure_kind(e) == "device_error" else "missing_training_op"
            st.find(kind, f"block {name} does not run on {target.name}: {one_line(e)}")
            continue
        names = [n for n in g64 if n in gt and n in gr]
        out_t, out_r = normwise(ht, h64), normwise(hr, h64)
        gt_all, gr_all, g64_all = _flat(gt, names), _flat(gr, names), _flat(g64, names)
        grad_t, grad_r = normwise(gt_all, g64_all), normwise(gr_all, g64_all)
        per_param = {n: (normwise(gt[n], g64[n]).err, normwise(gr[n], g64[n]).err) for n in names}
        worst = max(per_param, key=lambda n: per_param[n][0] / max(per_param[n][1], 1e-30)) if names else None
        row = {"block": name, "output": {"target": out_t.to_dict(), "reference": out_r.to_dict()},
               "grad": {"target": grad_t.to_dict(), "reference": grad_r.to_dict()},
               "grad_norm_ratio": grad_t.norm / grad_r.norm if grad_r.norm else math.nan,
               "grad_cosine_vs_reference": normwise(gt_all, gr_all).cosine,
               "worst_param": worst, "worst_param_err": per_param[worst] if worst else None,
               "output_fail": judge_normwise(out_t.err, out_r.err, dtype),
               "grad_fail": judge_normwise(grad_t.err, grad_r.err, dtype)}
        rows.append(row)
        if row["output_fail"]:
            st.find("block_forward", f"block {name} output on {target.name}: {row['output_fail']}")
        if row["grad_fail"]:
            st.find("block_gradients", f"block {name} parameter gradients on {target.name}: {row['grad_fail']} "
                                       f"(worst: {worst})")
    st.evidence["blocks"] = rows
    _model_gradients(st, work, target, reference, dtype)
    nb = sum(1 for r in rows if r["output_fail"] or r["grad_fail"])
    layers = st.evidence.get("layers", [])
    nl = [r["group"] for r in layers if r["fail"]]
    st.summary = (f"{len(rows)} blocks: {nb} differ beyond tolerance; whole model: "
                  + (f"gradients of {', '.join(nl)} off" if nl else "per-layer gradients within tolerance"))
    return st


def _model_gradients(st: StageResult, work: Workload, target: Backend, reference: Backend, dtype: torch.dtype) -> None:
    """Per layer group (embed, layers.i, mtp.k, norm, head): gradient error of one full step, in backprop order."""
    batch = [work.batches[0]]
    try:
        bt = work.build(target)
        rt = bt.runner.compute(batch)
    except Exception as e:  # noqa: BLE001
        st.find(failure_kind(e), f"whole-model step failed on {target.name}: {one_line(e)}")
        return
    br = work.build(reference)
    rr = br.runner.compute(batch)
    m64 = _f64(work.host_model())
    x, y = work.batches[0]
    m64(x, targets=y).loss.backward()
    g_t, g_r, g_64 = (_group_grads(m) for m in (bt.inner, br.inner, m64))
    rows = []
    for group in backprop_order(list(g_64)):
        if group not in g_t or group not in g_r:
            continue
        et, er = normwise(g_t[group], g_64[group]), normwise(g_r[group], g_64[group])
        fail = judge_normwise(et.err, er.err, dtype)
        rows.append({"group": group, "target_err": et.err, "reference_err": er.err,
                     "norm_target": rt.layer_grad_norms.get(group, et.norm),
                     "norm_reference": rr.layer_grad_norms.get(group, er.norm),
                     "norm_ratio": et.norm / er.norm if er.norm else math.nan,
                     "cosine": normwise(g_t[group], g_r[group]).cosine, "fail": fail})
    st.evidence["layers"] = rows
    st.evidence["loss"] = {"target": rt.loss, "reference": rr.loss}
    bad = [r for r in rows if r["fail"]]
    if bad:
        trend = ", ".join(f"{r['group']} {r['target_err']:.2g}" for r in bad)
        grows = len(bad) > 1 and bad[-1]["target_err"] > 1.5 * bad[0]["target_err"]
        st.evidence["error_grows_with_depth"] = grows
        st.find("model_gradients", f"whole-model gradients on {target.name} are off in {len(bad)} of {len(rows)} "
                                   f"layer groups (relative error, in backprop order: {trend})"
                + ("; the error grows with backprop depth" if grows else ""))


def backprop_order(groups: list[str]) -> list[str]:
    """head, norm, mtp.k (last first), layers.N-1 ... layers.0, embed: the order gradients are produced in."""
    def key(g: str) -> tuple:
        kind, _, idx = g.partition(".")
        rank = {"head": 0, "norm": 1, "mtp": 2, "layers": 3, "embed": 4}.get(kind, 5)
        return rank, -(int(idx) if idx.isdigit() else 0)
    return sorted(groups, key=key)


def _group_grads(model: nn.Module) -> dict[str, torch.Tensor]:
    """Each layer group's gradients concatenated (float64, CPU)."""
    out = {}
    for name, params in layer_groups(model):
        grads = [p.grad.detach().cpu().double().reshape(-1) for p in params if p.grad is not None]
        if grads:
            out[name] = torch.cat(grads)
    return out


class _Null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None

