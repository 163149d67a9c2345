"""Error measures and the pass rules qualification judges numbers by, all in one place.

Every comparison has three parties: the *target* under test, the *reference* device (default: the host CPU) and a
float64 result on the CPU (the "truth"). The target is never held to a fixed bar alone: it may be as inexact as the
reference device, times a factor (Ascend msprobe's "benchmark comparison" idea), because a CPU fp32 kernel is
itself a few ulp off float64 and some ops (large reductions) legitimately miss torch.testing's tolerances.

Elementwise (one op's output):
    outside  = |a - e| > atol + rtol * |e|          torch.testing's rule, per-dtype (rtol, atol) from TOLERANCES
    ratio    = share of elements outside              the "error ratio" (Ascend assertRtolEqual / msprobe)
    rel      = |a - e| / (|e| + atol)                 relative error, atol keeps near-zero elements finite
    an op FAILS when  ratio_t > max(2 * ratio_r, 1e-3)
                or    max_rel_t > 10 * max_rel_r  and  max_rel_t > rtol          (float outputs only)
Integer and bool outputs use the ratio rule only (an element is outside when it differs at all). NaN where the
truth is NaN, and the same infinity, count as equal; NaN against a number counts as outside.

Normwise (a block's output or a layer's gradients, where error accumulates over many ops):
    err = ||a - e|| / ||e||;  FAILS when  err_t > max(10 * err_r, NORM_FLOOR[dtype])
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

#: torch.testing._comparison._DTYPE_PRECISIONS: (rtol, atol) per dtype
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float16: (1e-3, 1e-5),
    torch.bfloat16: (1.6e-2, 1e-5),
    torch.float32: (1.3e-6, 1e-5),
    torch.float64: (1e-7, 1e-7),
}
RATIO_FACTOR = 2.0  # the target's error ratio may be this many times the reference's ...
RATIO_FLOOR = 1e-3  # ... or this share of elements (Ascend's "double-thousandths" bar), whichever is larger
MAXREL_FACTOR = 10.0  # max relative error may be this many times the reference's (or within rtol)
NORM_FACTOR = 10.0  # normwise error of a block / layer gradient may be this many times the reference's ...
#: ... or this much, whichever is larger: a few hundred ulp of accumulated rounding in the compute dtype
NORM_FLOOR: dict[torch.dtype, float] = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 2e-3,
                                        torch.float64: 1e-12}


def tolerance(dtype: torch.dtype) -> tuple[float, float]:
    """(rtol, atol) for a floating dtype; exact (0, 0) for integer and bool dtypes."""
    return TOLERANCES.get(dtype, (0.0, 0.0))


@dataclass
class ErrStats:
    """Elementwise error of one result against the float64 truth (worst over outputs and draws once merged)."""

    ratio: float = 0.0  # share of elements outside atol + rtol * |truth|
    max_rel: float = 0.0
    mean_rel: float = 0.0
    numel: int = 0
    exact_only: bool = False  # integer/bool outputs: only the ratio rule applies

    def merge(self, other: ErrStats) -> ErrStats:
        """The worse of two measurements, per field."""
        return ErrStats(max(self.ratio, other.ratio), max(self.max_rel, other.max_rel),
                        max(self.mean_rel, other.mean_rel), self.numel + other.numel,
                        self.exact_only and other.exact_only)

    def to_dict(self) -> dict:
        return {k: (v if not isinstance(v, float) or math.isfinite(v) else str(v)) for k, v in asdict(self).items()}


def elementwise(actual: torch.Tensor, truth: torch.Tensor, dtype: torch.dtype | None = None) -> ErrStats:
    """Error of `actual` against `truth` (same shape; any devices and dtypes) under `dtype`'s tolerance."""
    dtype = dtype or actual.dtype
    a, e = actual.detach().cpu(), truth.detach().cpu()
    n = a.numel()
    if n == 0:
        return ErrStats(numel=0, exact_only=not dtype.is_floating_point)
    if not dtype.is_floating_point or not (a.is_floating_point() or a.is_complex()):
        outside = a.to(e.dtype) != e if a.dtype != e.dtype else a != e
        ratio = float(outside.double().mean())
        return ErrStats(ratio, float(ratio > 0), ratio, n, exact_only=True)
    a, e = a.double(), e.double()
    rtol, atol = tolerance(dtype)
    diff = (a - e).abs_()
    if bool(torch.isfinite(diff).all()):  # the common case: no NaN or inf anywhere, a few passes only
        mag = e.abs()
        outside = int((diff > mag.mul(rtol).add_(atol)).sum())
        rel = diff.div_(mag.add_(atol))
        return ErrStats(outside / n, float(rel.max()), float(rel.mean()), n)
    nan_a, nan_e = torch.isnan(a), torch.isnan(e)
    same = (nan_a & nan_e) | (torch.isinf(a) & (a == e))
    diff = (a - e).abs()
    diff = torch.where(same, torch.zeros_like(diff), diff)
    diff = torch.where(torch.isnan(diff), torch.full_like(diff, math.inf), diff)  # NaN vs number, inf vs other
    bound = atol + rtol * torch.where(torch.isfinite(e), e.abs(), torch.zeros_like(e))
    outside = diff > bound
    rel = diff / (torch.where(torch.isfinite(e), e.abs(), torch.zeros_like(e)) + atol)
    return ErrStats(float(outside.double().mean()), float(rel.max()), float(rel.mean()), n)


def judge_elementwise(t: ErrStats, r: ErrStats, dtype: torch.dtype) -> str | None:
    """None when the target's error is acceptable next to the reference's, else why not (one line)."""
    bar = max(RATIO_FACTOR * r.ratio, RATIO_FLOOR)
    if t.ratio > bar:
        return (f"error ratio {t.ratio:.3g} > {bar:.3g} (= max({RATIO_FACTOR:g} x reference's {r.ratio:.3g}, "
                f"{RATIO_FLOOR:g}))")
    rtol, _ = tolerance(dtype)
    if not t.exact_only and t.max_rel > MAXREL_FACTOR * r.max_rel and t.max_rel > rtol:
        return (f"max relative error {t.max_rel:.3g} > {MAXREL_FACTOR:g} x reference's {r.max_rel:.3g} and > "
                f"rtol {rtol:g}")
    return None


def score(t: ErrStats, r: ErrStats, dtype: torch.dtype) -> float:
    """The target's error as a multiple of what the rule allows (> 1 exactly when judge_elementwise fails)."""
    s = t.ratio / max(RATIO_FACTOR * r.ratio, RATIO_FLOOR)
    if not t.exact_only:
        s = max(s, t.max_rel / max(MAXREL_FACTOR * r.max_rel, tolerance(dtype)[0]))
    return s


@dataclass
class NormErr:
    """Normwise error of one tensor (or a group concatenated) against the truth, and its agreement with another."""

    err: float  # ||a - e|| / ||e||
    norm: float  # ||a||
    cosine: float = 1.0  # cos(a, e)

    def to_dict(self) -> dict:
        return {k: (v if math.isfinite(v) else str(v)) for k, v in asdict(self).items()}


def normwise(actual: torch.Tensor, truth: torch.Tensor) -> NormErr:
    """||a - e|| / ||e|| and cos(a, e), in float64 (tensors of any shape, flattened)."""
    a, e = actual.detach().cpu().double().reshape(-1), truth.detach().cpu().double().reshape(-1)
    en = float(e.norm())
    dn = float((a - e).norm())
    an = float(a.norm())
    err = dn / en if en > 0 else (0.0 if dn == 0 else math.inf)
    cos = float(a @ e) / (an * en) if an > 0 and en > 0 else (1.0 if an == en else 0.0)
    if not math.isfinite(dn):
        err = math.inf
    return NormErr(err, an, cos)


def judge_normwise(t: float, r: float, dtype: torch.dtype) -> str | None:
    """None when a normwise error `t` is acceptable next to the reference's `r`, else why not."""
    bar = max(NORM_FACTOR * r, NORM_FLOOR.get(dtype, NORM_FLOOR[torch.float32]))
    if not math.isfinite(t) or t > bar:
        return f"relative error {t:.3g} > {bar:.3g} (= max({NORM_FACTOR:g} x reference's {r:.3g}, floor))"
    return None


def ulp_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest |a - b| in ulps of b's dtype at b's largest magnitude (0 when equal; inf for NaN/shape mismatch).

    Measured at the tensor's scale rather than per element: a gradient element near zero would otherwise turn
    a harmless 1e-12 difference into millions of "ulps".
    """
    if a.dtype != b.dtype or a.shape != b.shape:
        return math.inf
    if not a.is_floating_point():
        return 0.0 if torch.equal(a, b) else math.inf
    d = (a.double() - b.double()).abs()
    if not bool(torch.isfinite(d).all()):
        return math.inf
    if not d.numel():
        return 0.0
    scale = max(float(b.double().abs().max()), torch.finfo(b.dtype).tiny)
    return float(d.max()) / (torch.finfo(b.dtype).eps * scale)


def bitwise_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """True when the two tensors hold the same bits (NaNs included)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.is_floating_point():
        view = {8: torch.int64, 4: torch.int32, 2: torch.int16, 1: torch.int8}[a.element_size()]
        return torch.equal(a.contiguous().view(view), b.contiguous().view(view))
    return torch.equal(a, b)
