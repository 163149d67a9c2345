"""What each numeric fault does to a tensor, and the errors the emulated accelerator raises.

Pure functions on plain CPU tensors, called from the sim dispatch mode (so autograd is already below them and
nothing here records a graph). None touches torch's global RNG: randomness comes from the generators passed in.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable
from typing import Any

import torch

#: C++ scalar-type names, as torch's own "not implemented for 'BFloat16'" kernel errors spell them
_CPP_NAMES = {torch.float32: "Float", torch.bfloat16: "BFloat16", torch.float16: "Half", torch.float64: "Double"}
#: same-width integer dtype for reinterpreting a float tensor's bits
_INT_VIEW = {torch.float64: torch.int64, torch.float32: torch.int32, torch.bfloat16: torch.int16,
             torch.float16: torch.int16, torch.float8_e4m3fn: torch.int8, torch.float8_e5m2: torch.int8}


class SimDeviceError(RuntimeError):
    """The emulated accelerator lost its device (an injected `device_error`, or a hang with error_after)."""


def missing_kernel_error(op: str, dtype: torch.dtype, target: str, dtype_name: str) -> RuntimeError:
    """The error a device without kernels for `dtype` raises, worded like torch's missing-kernel errors."""
    cpp = _CPP_NAMES.get(dtype, str(dtype).removeprefix("torch."))
    return RuntimeError(f'"{op}_impl_cpu_" not implemented for \'{cpp}\' ({target} has no {dtype_name} kernels)')


def find_dtype(args: Iterable[Any], kwargs: dict[str, Any], dtypes: frozenset) -> torch.dtype | None:
    """The first dtype in `dtypes` among the tensors, dtype arguments and lists of them in args/kwargs."""
    for value in (*args, *kwargs.values()):
        items = value if isinstance(value, (list, tuple)) else (value,)
        for v in items:
            if isinstance(v, torch.Tensor):
                if v.dtype in dtypes:
                    return v.dtype
            elif isinstance(v, torch.dtype) and v in dtypes:
                return v
    return None


def qualified(op: str) -> str:
    """An op's name for messages: 'aten::mm' for the normalised 'mm', 'c10d::allreduce' as it is."""
    return op if "::" in op else f"aten::{op}"


def _float_tensors(value: Any) -> list[torch.Tensor]:
    """The non-empty floating-point tensors in `value`, lists and tuples (of lists) flattened."""
    if isinstance(value, torch.Tensor):
        return [value] if value.is_floating_point() and value.numel() else []
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _float_tensors(v)]
    return []


def wait_work(out: Any) -> None:
    """Block until a c10d op's asynchronous Work completes: only then do its buffers hold the result (a fault
    written earlier would be overwritten by the collective)."""
    for o in out if isinstance(out, (tuple, list)) else (out,):
        if isinstance(o, torch.ScriptObject) and hasattr(o, "wait"):
            o.wait()


def collective_results(op: str, out: Any, args: tuple) -> list[torch.Tensor]:
    """The floating-point buffers a c10d op fills with its result: the tensors it returns (all_reduce's, all_gather's
    output), else its first argument (all_to_all returns only its Work and writes `output`); none for a send."""
    if op == "c10d::send":
        return []
    return _float_tensors(out) or _float_tensors(args[:1])


def map_outputs(func: Any, out: Any, fn: Callable[[torch.Tensor], torch.Tensor],
                results: list[torch.Tensor] | None = None) -> Any:
    """Apply `fn` (tensor -> new tensor) to each floating-point tensor output of `func`.

    An output that aliases an input (in-place, out= and view ops: the schema return has alias info) is
    overwritten in place, so the caller's tensor carries the fault; any other output is replaced. `results`
    (a collective's buffers, `collective_results`) are all overwritten in place and `out` is returned as is.
    """
    if results is not None:
        for t in results:
            t.copy_(fn(t))
        return out
    returns = func._schema.returns

    def one(t: Any, i: int) -> Any:
        if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.numel() == 0:
            return t
        new = fn(t)
        if returns and returns[min(i, len(returns) - 1)].alias_info is not None:
            t.copy_(new)
            return t
        return new

    if isinstance(out, (tuple, list)):
        return type(out)(one(t, i) for i, t in enumerate(out))
    return one(out, 0)


def round_to(t: torch.Tensor, precision: torch.dtype) -> torch.Tensor:
    """`t` rounded to `precision` and back, when `precision` is coarser than t's dtype (else `t` itself)."""
    if not t.is_floating_point() or torch.finfo(t.dtype).eps >= torch.finfo(precision).eps:
        return t
    return t.to(precision).to(t.dtype)


def round_args(args: tuple, kwargs: dict, precision: torch.dtype) -> tuple[tuple, dict]:
    """Round floating tensor inputs (also inside lists) to `precision`; `out=` buffers are left alone."""
    def r(v: Any) -> Any:
        if isinstance(v, torch.Tensor):
            return round_to(v, precision)
        if isinstance(v, (list, tuple)):
            return type(v)(r(x) for x in v)
        return v
    return tuple(r(a) for a in args), {k: (v if k == "out" else r(v)) for k, v in kwargs.items()}


def scale(t: torch.Tensor, factor: float) -> torch.Tensor:
    """`t * factor` in t's dtype (bad_backward: the gradient a subtly wrong kernel returns)."""
    return t * factor


class UlpJitter:
    """Outputs times (1 + k*eps), k per element uniform in [-ulps, ulps]: the rounding a correct device that
    orders its reductions differently leaves. The sim's `nondeterministic` fault, and the per-op noise of the
    qualification's perturbed reference run (qualify/training.py).

    The factors come from a seeded pool read at a random offset on every call: one multiply per output instead
    of drawing random numbers for every element of every op (outputs longer than the pool draw fresh ones).
    With `distinct`, element 0's k is forced non-zero and different from the previous call's for the same op, so
    two identical consecutive calls always differ (even for a scalar reduction), as a real non-deterministic
    reduction may.
    """

    POOL = 1 << 22  # factors per dtype

    def __init__(self, seed: int, ulps: int, distinct: bool = True):
        self.ulps, self.distinct = ulps, distinct
        self.gen = torch.Generator().manual_seed(seed)  # private: the training run's RNG stays untouched
        self.pick = random.Random(seed)
        self.k = torch.randint(-ulps, ulps + 1, (self.POOL,), generator=self.gen, dtype=torch.int32)
        self.pools: dict[torch.dtype, torch.Tensor] = {}
        self.last_k0: dict[str, int] = {}

    def __call__(self, t: torch.Tensor, op: str = "") -> torch.Tensor:
        f = self._factors(t.dtype, t.numel())
        if self.distinct:
            u = self.ulps
            k0 = self.pick.choice([j for j in range(-u, u + 1) if j not in (0, self.last_k0.get(op))])
            self.last_k0[op] = k0
            f = f.clone()  # a slice of the pool: never write into it
            f[0] = 1 + k0 * torch.finfo(t.dtype).eps
        return t * f.to(t.device).view(t.shape)

    def _factors(self, dtype: torch.dtype, n: int) -> torch.Tensor:
        eps = torch.finfo(dtype).eps
        if n > self.POOL:
            k = torch.randint(-self.ulps, self.ulps + 1, (n,), generator=self.gen, dtype=torch.int32)
            return 1 + k.to(dtype) * eps
        pool = self.pools.get(dtype)
        if pool is None:  # 1 + k eps is exact in the dtype for small k (below 1 the spacing is eps/2)
            pool = self.pools[dtype] = 1 + self.k.to(dtype) * eps
        start = self.pick.randrange(self.POOL - n + 1)
        return pool[start:start + n]


def flip_bit(t: torch.Tensor, index: int, bit: int) -> tuple[torch.Tensor, int]:
    """A copy of `t` with bit `bit` (mod the element width) of flat element `index` flipped; returns (copy, bit)."""
    out = t.contiguous().clone()
    ints = out.view(_INT_VIEW[out.dtype]) if out.is_floating_point() else out
    width = ints.element_size() * 8
    bit %= width
    mask = -(1 << (width - 1)) if bit == width - 1 else 1 << bit  # the sign bit as a signed int of that width
    flat = ints.view(-1)
    flat[index] = flat[index] ^ mask
    return out, bit


def sleep_for(seconds: float) -> None:
    """Block for `seconds` (a fallback's extra host time); time.sleep overshoots tiny waits, which only adds."""
    if seconds > 0:
        time.sleep(seconds)
