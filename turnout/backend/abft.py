"""Row checksums of matrix products (algorithm-based fault tolerance), with a bound derived from rounding error.

For C = beta*M + alpha*A.B (A [.., m, k], B [.., k, n]) the row sums of C must equal
beta*(M.1) + alpha*A.(B.1); both sides are formed from the tensors the model really holds, so what is left
between them is rounding. The bound on it is probabilistic (Higham & Mary, "A new approach to probabilistic
rounding error analysis", 2019): with each rounding an independent, mean-zero error of at most u, a sum of
products has a sub-Gaussian error whose scale is sqrt(terms) * u * ||products||_2, so exceeding LAMBDA times
that scale has probability at most 2 exp(-LAMBDA^2 / 2) = 4e-22 per row. For row i, with a_i its row of A,
b_l the rows of B and b1 = B.1:

    sigma_i = ||a_i|| * ( max_l ||b_l|| * (sqrt(k) u_acc + 2 u_in + sqrt(n) u_chk) + max_l |b1_l| sqrt(k) u_chk )
              + ||C_i|| * (sqrt(n) u_chk + u_out)

u_acc: the product kernel's accumulator; u_in: rounding of its inputs inside the kernel (TF32, bf16 modes);
u_out: rounding of its result to a narrower output dtype; u_chk: the checks' own accumulation (float32 for
half and single precision operands, float64 for double). The worst-case bound (k u |A| |B|) would be about
sqrt(k n) times wider and would miss flips of the top mantissa bits. The checks reduce in float32 rather than
float64 because a float64 reduction of a float32 tensor costs ~10x on a CPU (it converts first); their own
rounding is the u_chk part of the bound.

Each check returns (discrepancy, bound) per output row, float32 tensors on the product's device: nothing is
read back to the host here.
"""

import math
from dataclasses import dataclass

import torch

#: tail multiplier: a clean row exceeds LAMBDA * sigma with probability <= 2 exp(-LAMBDA^2 / 2) (4e-22)
LAMBDA = 10.0
_U = {torch.float64: 2.0 ** -53, torch.float32: 2.0 ** -24, torch.bfloat16: 2.0 ** -8, torch.float16: 2.0 ** -11}
_TF32 = 2.0 ** -11
_F64 = torch.float64


def unit_roundoff(dtype: torch.dtype) -> float:
    """Half the spacing of `dtype` at 1 (2^-24 for float32)."""
    return _U.get(dtype, torch.finfo(dtype).eps / 2)


@dataclass(frozen=True)
class Precision:
    """How one product call rounds: its accumulator, its inputs inside the kernel, and its output."""

    u_acc: float
    u_in: float
    u_out: float
    tiny: float  # the smallest normal number of the inputs' dtype: underflow adds at most this per product
    work: torch.dtype  # what the checks accumulate in: float32, or float64 for float64 operands

    @property
    def u_chk(self) -> float:
        return unit_roundoff(self.work)

    @staticmethod
    def of(inputs: torch.dtype, output: torch.dtype, device_type: str) -> "Precision":
        """Half-precision inputs accumulate in float32 (as tensor cores and CPU kernels do); float32 inputs are
        rounded to TF32 (CUDA with allow_tf32) or to bfloat16/TF32 where torch's matmul precision allows it."""
        u_acc = unit_roundoff(_F64) if inputs == _F64 else unit_roundoff(torch.float32)
        u_in = 0.0
        if inputs == torch.float32:
            level = torch.get_float32_matmul_precision()
            if device_type == "cuda" and torch.backends.cuda.matmul.allow_tf32:
                u_in = _TF32
            elif level == "medium":
                u_in = unit_roundoff(torch.bfloat16)
            elif level == "high":
                u_in = _TF32
        u_out = unit_roundoff(output)
        work = _F64 if inputs == _F64 else torch.float32
        return Precision(u_acc, u_in, u_out if u_out > u_acc else 0.0, torch.finfo(inputs).tiny, work)


def _along_rows(t: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(tensor, dim) that reduce `t` over its last dim fast: a transposed matrix (a weight's W^T, a gradient's
    dY^T) is reduced along its storage's rows instead, as a strided reduction is several times slower."""
    if t.dim() >= 2 and not t.is_contiguous() and t.mT.is_contiguous():
        return t.mT, -2
    return t, -1


def _norms(t: torch.Tensor) -> torch.Tensor:
    """||t_i||_2 over the last dim (vector_norm across a non-last dim is ~10x slower than multiply-and-sum on CPU, and
    square() is slower than a product with itself)."""
    src, dim = _along_rows(t)
    return torch.linalg.vector_norm(src, dim=-1) if dim == -1 else (src * src).sum(dim).sqrt_()


def _sums(b: torch.Tensor, work: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """From B [.., k, n]: b1 = B.1 [.., k], max_l ||b_l|| [..] and max_l |b1_l| [..], in `work` precision."""
    b = b.to(work)
    src, dim = _along_rows(b)
    b1 = src.sum(dim)
    return b1, _norms(b).amax(-1), b1.abs().amax(-1)


def _verdict(got: torch.Tensor, ref: torch.Tensor, an: torch.Tensor, bmax: torch.Tensor, b1max: torch.Tensor,
             c: torch.Tensor, p: Precision, k: int | torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(|got - ref|, LAMBDA * sigma) per row, flattened (sigma: see the module doc). Rows whose reference is not
    finite (the inputs already were not) read 0; a non-finite result against a finite reference reads inf."""
    u, rk, rn = p.u_chk, k ** 0.5, math.sqrt(n)
    # norms square their entries: below sqrt(tiny) the squares underflow, so each norm is floored at what
    # entries of that size could add up to
    floor = math.sqrt(torch.finfo(got.dtype).tiny)
    an, bmax, b1max = an + rk * floor, bmax + rn * floor, b1max + rn * floor
    cn = torch.linalg.vector_norm(c, dim=-1, dtype=got.dtype).nan_to_num_(nan=0.0, posinf=0.0).add_(rn * floor)
    per_a = bmax * (LAMBDA * (rk * p.u_acc + 2 * p.u_in + rn * u)) + b1max * (LAMBDA * rk * u)  # [.., 1] or [E, 1]
    bound = torch.addcmul(cn.mul_(LAMBDA * (rn * u + p.u_out)).add_(k * n * p.tiny + torch.finfo(got.dtype).tiny),
                          an, per_a)
    diff = (got - ref).abs_().nan_to_num_(nan=math.inf, posinf=math.inf)
    diff.masked_fill_(~torch.isfinite(ref), 0.0)
    return diff.reshape(-1), bound.nan_to_num_(nan=math.inf).reshape(-1)  # non-finite inputs: nothing to judge


def check_product(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, p: Precision, *, alpha: float = 1.0,
                  beta: float = 0.0, m_rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """C = beta*M + alpha*A.B for A [.., m, k], B [.., k, n], C [.., m, n] (mm, addmm, bmm, baddbmm).
    `m_rows`: M's row sums broadcast to C's rows [.., m], taken before an in-place op overwrote M."""
    k, n, work = a.shape[-1], b.shape[-1], p.work
    a = a.to(work)
    b1, bmax, b1max = _sums(b, work)
    ref = (a @ b1.unsqueeze(-1)).squeeze(-1)
    an = _norms(a)
    if alpha != 1.0:
        ref, an = ref * alpha, an * abs(alpha)
    if m_rows is not None and beta != 0.0:
        ref = ref + beta * m_rows.to(work)
    return _verdict(c.sum(-1, dtype=work), ref, an, bmax.unsqueeze(-1), b1max.unsqueeze(-1), c, p, k, n)


def row_sums_of(m: torch.Tensor, shape: torch.Size, p: Precision) -> torch.Tensor:
    """Row sums of `m` broadcast to `shape` (an addmm bias [n] or a full [.., m, n] input)."""
    return m.expand(shape).sum(-1, dtype=p.work)


def _groups(offs: torch.Tensor, length: int) -> torch.Tensor:
    """Group id of each of `length` positions split at the cumulative ends `offs` (past the last end: len(offs))."""
    return torch.searchsorted(offs.to(torch.int64), torch.arange(length, device=offs.device), right=True)


def check_grouped(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, offs: torch.Tensor | None,
                  p: Precision) -> tuple[torch.Tensor, torch.Tensor] | None:
    """torch._grouped_mm: A [N, K] x B [E, K, n] (rows grouped by offs), A [m, N] x B [N, n] -> C [E, m, n] (the
    shared dimension grouped: weight gradients) or A [E, m, K] x B [E, K, n]; None for a layout it cannot check."""
    work = p.work
    if a.dim() == 3 and b.dim() == 3:
        return check_product(a, b, c, p)
    if offs is None:
        return None
    if a.dim() == 2 and b.dim() == 3:  # row t of A (and of C) belongs to expert g(t)
        E = b.shape[0]
        g = _groups(offs, a.shape[0])
        live = g < E  # rows past the last group are left unwritten by the kernel
        g = g.clamp_(max=E - 1)
        a = a.to(work)
        b1, bmax, b1max = _sums(b, work)  # [E, K], [E], [E]
        ref = (a @ b1.t()).gather(1, g.unsqueeze(1)).squeeze(1)  # [N]: a_t . b1[g(t)]
        an = _norms(a)
        diff, bound = _verdict(c.sum(-1, dtype=work), ref, an, bmax[g], b1max[g], c, p, a.shape[1], b.shape[-1])
        return diff.masked_fill_(~live, 0.0), bound
    if a.dim() == 2 and b.dim() == 2:  # C[e] = A[:, seg e] . B[seg e, :]
        E, N = c.shape[0], a.shape[1]
        g = _groups(offs, N)  # positions past the last end fall in group E, which is dropped
        at = a.mT.to(work)  # [N, m]: a weight gradient's A is X^T, so this is X itself, contiguous
        b = b.to(work)
        b1 = b.sum(-1)  # [N]
        # segment sums by index_add_ over whole rows: a product with a one-hot [N, E] matrix is a skinny GEMM
        # on a transposed operand, several times slower on CPU
        ref = at.new_zeros(E + 1, at.shape[1]).index_add_(0, g, at * b1.unsqueeze(1))[:E]  # [E, m]
        an = at.new_zeros(E + 1, at.shape[1]).index_add_(0, g, at * at)[:E].sqrt_()  # [E, m]: norms over seg e
        bmax = b1.new_zeros(E + 1).scatter_reduce_(0, g, torch.linalg.vector_norm(b, dim=-1), "amax")[:E]
        b1max = b1.new_zeros(E + 1).scatter_reduce_(0, g, b1.abs(), "amax")[:E]
        k = torch.diff(offs.to(work), prepend=offs.new_zeros(1, dtype=work)).clamp_(min=1).unsqueeze(-1)  # [E, 1]
        return _verdict(c.sum(-1, dtype=work), ref, an, bmax.unsqueeze(1), b1max.unsqueeze(1), c, p, k, b.shape[-1])
    return None
