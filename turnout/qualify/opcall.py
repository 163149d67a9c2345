"""Replaying one traced op: input draws, the float64 truth, and a timed run on a backend (forward or autograd).

Draw 0 replays the traced input values (so ops whose inputs must satisfy constraints -- rsqrt of a mean square,
softmax outputs -- see realistic values); draw 1 replaces every floating-point input with fresh randn. Integer and
bool inputs (indices, offsets, masks) are always the traced ones, so they stay valid. The truth runs the same
inputs upcast to float64 on the CPU; ops without a float64 CPU kernel get a float64 implementation here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch.utils._pytree import tree_leaves, tree_map

from turnout.backend import Backend
from turnout.errors import one_line
from turnout.qualify.stage import is_missing


def draw(args: tuple, kwargs: dict, which: int, seed: int) -> tuple[tuple, dict]:
    """Inputs for one run: which=0 the traced values, else fresh randn (seeded) in each float tensor's dtype."""
    gen = torch.Generator().manual_seed(seed)

    def one(t: Any) -> Any:
        if not isinstance(t, torch.Tensor):
            return t
        if which == 0 or not t.is_floating_point():
            return t.clone()
        return torch.randn(t.shape, generator=gen, dtype=torch.float32).to(t.dtype)

    return tree_map(one, args), tree_map(one, kwargs)


def to_f64(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """Floating tensors and floating dtype arguments (e.g. `_to_copy(dtype=bf16)`) become float64."""
    def one(v: Any) -> Any:
        if isinstance(v, torch.Tensor):
            return v.to(torch.float64, copy=True) if v.is_floating_point() else v.clone()
        if isinstance(v, torch.dtype) and v.is_floating_point:
            return torch.float64
        return v
    return tree_map(one, args), tree_map(one, kwargs)


def _grouped_mm_f64(a: torch.Tensor, b: torch.Tensor, offs: torch.Tensor | None = None,
                    bias: torch.Tensor | None = None, out_dtype: Any = None) -> torch.Tensor:
    """torch._grouped_mm in float64 (the CPU kernel takes fp32/bf16/fp16 only); offs are cumulative group ends.

    2-D x 3-D: rows of a grouped, group g times b[g] -> [M, N]; 3-D x 2-D: columns of b grouped -> [M, N];
    2-D x 2-D: the shared K dimension grouped -> [G, M, N]; 3-D x 3-D: batched matmul.
    """
    if a.dim() == 3 and b.dim() == 3:
        out = a @ b
    else:
        ends = [int(v) for v in offs.tolist()]
        starts = [0] + ends[:-1]
        if a.dim() == 2 and b.dim() == 3:
            parts = [a[s:e] @ b[g] for g, (s, e) in enumerate(zip(starts, ends))]
            rest = a.shape[0] - ends[-1]
            out = torch.cat(parts + ([a.new_zeros(rest, b.shape[-1])] if rest > 0 else []), dim=0)
        elif a.dim() == 3 and b.dim() == 2:
            parts = [a[g] @ b[:, s:e] for g, (s, e) in enumerate(zip(starts, ends))]
            rest = b.shape[1] - ends[-1]
            out = torch.cat(parts + ([a.new_zeros(a.shape[1], rest)] if rest > 0 else []), dim=1)
        else:
            out = torch.stack([a[:, s:e] @ b[s:e] for s, e in zip(starts, ends)])
    return out + bias if bias is not None else out


#: float64 implementations for ops whose CPU kernel has no float64 version
F64_IMPLS: dict[str, Callable[..., Any]] = {"_grouped_mm": _grouped_mm_f64}


def f64_callable(func: Any) -> Callable[..., Any]:
    return F64_IMPLS.get(func.overloadpacket.__name__, func)


def tensors(out: Any) -> list[torch.Tensor]:
    """The tensor leaves of an op's result, in order."""
    return [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]


@dataclass
class Run:
    """One op call's result on one backend: outputs (CPU copies) or the error, time, and where it ran."""

    outs: list[torch.Tensor] | None = None
    grads: list[torch.Tensor | None] | None = None  # per floating input, for autograd runs
    seconds: float = 0.0
    error: str | None = None
    missing: bool = False  # the op (or dtype) has no kernel here
    fallback: bool = False  # the op ran on the host (sim fallback, or outputs came back on the CPU)
    exc: BaseException | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def _fallbacks(backend: Backend) -> int:
    return sum(getattr(backend, "fallbacks", {}).values())


def _to(v: Any, device: torch.device) -> Any:
    """Copies on `device` (always copies: an in-place op must not touch the draw other runs reuse)."""
    return tree_map(lambda t: t.to(device, copy=True) if isinstance(t, torch.Tensor) else t, v)


def run_forward(func: Any, args: tuple, kwargs: dict, backend: Backend | None) -> Run:
    """Call `func` once on `backend` (None: float64 on the host CPU), under its compute(); outputs copied back."""
    if backend is None:
        a, k = to_f64(args, kwargs)
        fn, device, ctx = f64_callable(func), torch.device("cpu"), None
    else:
        device = backend.device()
        a, k = _to((args, kwargs), device)
        fn, ctx = func, backend
    before = _fallbacks(ctx) if ctx is not None else 0
    try:
        if ctx is not None:
            ctx.synchronize()
            with ctx.compute():
                t0 = time.perf_counter()
                out = fn(*a, **k)
                ctx.synchronize()
                took = time.perf_counter() - t0
        else:
            t0 = time.perf_counter()
            out = fn(*a, **k)
            took = time.perf_counter() - t0
    except Exception as e:  # noqa: BLE001 - any failure of the op is evidence, classified by the caller
        return Run(error=one_line(e), missing=is_missing(e), exc=e)
    outs = tensors(out)
    host = device.type != "cpu" and any(t.device.type == "cpu" for t in outs)
    fell = ctx is not None and _fallbacks(ctx) > before
    return Run([t.detach().cpu().clone() for t in outs], None, took, fallback=host or fell)


def run_grad(func: Any, args: tuple, kwargs: dict, backend: Backend | None,
             upstream: dict[int, torch.Tensor]) -> Run:
    """Autograd through one call of `func`: every floating input is a leaf, output i gets gradient upstream[i];
    returns the leaves' gradients (CPU). backend None: float64 on the host CPU."""
    if backend is None:
        a, k = to_f64(args, kwargs)
        fn, device, ctx = f64_callable(func), torch.device("cpu"), None
        upstream = {i: g.double() for i, g in upstream.items()}
    else:
        device = backend.device()
        a, k = _to((args, kwargs), device)
        fn, ctx = func, backend
    leaves: list[torch.Tensor] = []
    inplace = func._schema.is_mutable

    def leaf(t: Any) -> Any:
        if isinstance(t, torch.Tensor) and t.is_floating_point():
            t = t.detach().requires_grad_()
            leaves.append(t)
            return t.clone() if inplace else t  # autograd refuses in-place ops on leaves
        return t

    try:
        with ctx.compute() if ctx is not None else _null():
            a2, k2 = tree_map(leaf, a), tree_map(leaf, k)
            outs = tensors(fn(*a2, **k2))
            pairs = [(o, upstream[i].to(device=device, dtype=o.dtype)) for i, o in enumerate(outs)
                     if i in upstream and o.requires_grad]
            if not pairs:
                return Run(error="no differentiable output")
            torch.autograd.backward([o for o, _ in pairs], [g for _, g in pairs])
            if ctx is not None:
                ctx.synchronize()
    except Exception as e:  # noqa: BLE001
        return Run(error=one_line(e), missing=is_missing(e), exc=e)
    return Run(grads=[t.grad.detach().cpu().clone() if t.grad is not None else None for t in leaves])


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None
