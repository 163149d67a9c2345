"""Checksummed matrix products: a dispatch mode that verifies every product a training step runs, as it runs.

`ChecksumMode` sits on top of the dispatch-mode stack (above the sim's fault injector, so it sees the very
outputs the model goes on to consume) and, after each mm / addmm / bmm / baddbmm / _grouped_mm, forward or
backward, forms the product's row checksums (turnout.backend.abft). The checks run on the product's
own device with the other modes switched off (their ops are neither faulted nor counted as the model's calls)
and leave one ratio per call on the device; `StepChecks.collect` reads them all back once, at the end of the
step. Products it cannot verify (fused attention, convolutions, vector products) are counted by name, so a
report can say what went unchecked.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes

from turnout.backend.abft import Precision, check_grouped, check_product, row_sums_of
from turnout.errors import one_line

aten = torch.ops.aten

#: products with a row-checksum rule, and how to read (A, B, M, alpha, beta) from their arguments
_RULES: dict[Any, str] = {aten.mm.default: "mm", aten.bmm.default: "mm", aten.addmm.default: "addmm",
                          aten.addmm_.default: "addmm_", aten.baddbmm.default: "addmm",
                          aten.baddbmm_.default: "addmm_"}
if hasattr(aten, "_grouped_mm"):
    _RULES[aten._grouped_mm.default] = "grouped"
CHECKED_OPS = frozenset(_RULES)
#: products this mode does not verify (counted, not checked): by name, and by name fragment
_UNCHECKED = frozenset(("mv", "addmv", "dot", "vdot", "addbmm", "_scaled_mm", "_int_mm"))
_UNCHECKED_PARTS = ("attention", "convolution")


@dataclass
class Mismatch:
    """One product whose checksum disagreed with its operands beyond the rounding bound."""

    op: str  # 'aten::mm'
    phase: str  # 'forward' | 'backward'
    call: int  # index among the step's checked products (the same op order on a re-run)
    shape: tuple[int, ...]  # the output's
    row: int  # the flat output row with the largest discrepancy / bound
    discrepancy: float
    bound: float
    module: str = ""  # e.g. 'Transformer.layers.1.ffn.experts', when a locating re-run named it

    @property
    def ratio(self) -> float:
        return self.discrepancy / self.bound if self.bound > 0 else math.inf

    def describe(self) -> str:
        if self.op == "c10d::all_to_all_single":  # expert parallelism's exchange (turnout.train.expert_parallel)
            what = "sum" if self.row % 2 == 0 else "squared norm"
            return (f"{self.op} ({self.phase}) of {self.shape[0]} rows: the {what} of what came from its rank "
                    f"{self.row // 2} is off what was sent by {self.discrepancy:.3g}, bound {self.bound:.3g} "
                    f"({self.ratio:.3g}x)")
        if self.op == "c10d::all_gather":  # FSDP2's parameter all-gather: shape (world, shard), row = r * world + j
            r, j = divmod(self.row, self.shape[0])
            return (f"{self.op} ({self.phase}) of {self.shape[1]}-element parameter shards: rank {r}'s copy of rank "
                    f"{j}'s shard sums off what was sent by {self.discrepancy:.3g}, bound {self.bound:.3g} "
                    f"({self.ratio:.3g}x)")
        if self.op.startswith("c10d::"):  # a collective's conservation check (turnout.train.conservation)
            return (f"{self.op} of a {self.shape[0]}-element gradient bucket: its sum is off the ranks' summed local "
                    f"sums by {self.discrepancy:.3g}, bound {self.bound:.3g} ({self.ratio:.3g}x)")
        where = f" in {self.module}" if self.module else ""
        return (f"{self.op} ({self.phase}, product call {self.call}{where}, output {list(self.shape)}) row {self.row}:"
                f" checksum off by {self.discrepancy:.3g}, bound {self.bound:.3g} ({self.ratio:.3g}x)")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["shape"] = list(self.shape)
        return d


class StepChecks:
    """What one run of one step's products left: per-call facts on the host, per-call verdicts on the device."""

    def __init__(self, locate: Any = None):
        self.calls: list[tuple[str, str, tuple[int, ...], str]] = []  # (op, phase, output shape, module)
        self._ratios: list[torch.Tensor] = []  # 0-d float64 per call: max over rows of discrepancy / bound
        self._rows: list[tuple[torch.Tensor, torch.Tensor]] = []  # (discrepancy, bound) per row, kept for details
        self.unchecked: Counter[str] = Counter()  # op -> calls this mode could not verify
        self.locate = locate  # a torch ModuleTracker while a re-run names modules, else None
        self._found: list[Mismatch] | None = None

    def __len__(self) -> int:
        return len(self.calls)

    def add(self, op: str, phase: str, shape: tuple[int, ...], diff: torch.Tensor, bound: torch.Tensor) -> None:
        module = "" if self.locate is None else _innermost(self.locate.parents)
        self.calls.append((op, phase, shape, module))
        self._rows.append((diff, bound))
        self._ratios.append((diff / bound).amax() if diff.numel() else diff.new_zeros(()))

    def collect(self) -> list[Mismatch]:
        """The mismatching calls (one host read for the whole step; cached)."""
        if self._found is None:
            self._found = []
            if self._ratios:
                ratios = torch.stack(self._ratios).cpu().tolist()
                for i, r in enumerate(ratios):
                    if not r <= 1.0:  # NaN never passes
                        self._found.append(self._detail(i))
            self._rows.clear()
        return self._found

    def _detail(self, i: int) -> Mismatch:
        op, phase, shape, module = self.calls[i]
        diff, bound = self._rows[i]
        row = int(torch.nan_to_num(diff / bound, nan=math.inf).argmax())
        return Mismatch(op, phase, i, shape, row, float(diff[row]), float(bound[row]), module)


def _innermost(parents: set[str]) -> str:
    """The module a product runs in, from a ModuleTracker's set of running modules: the deepest one when they
    nest (always in the forward); in the backward several branches can be open at once, and all are named."""
    names = [p for p in parents if p != "Global"]
    leaves = sorted(p for p in names if not any(q != p and q.startswith(p + ".") for q in names))
    return " or ".join(leaves)


def phase() -> str:
    """'backward' while autograd's engine runs a backward pass on this thread, else 'forward'."""
    return "backward" if torch._C._current_graph_task_id() != -1 else "forward"


def _qualified(func: Any) -> str:
    return f"aten::{func.overloadpacket.__name__}"


class ChecksumMode(TorchDispatchMode):
    """Verifies every checked product into `self.checks` (a fresh StepChecks per `start`)."""

    def __init__(self):
        super().__init__()
        self.checks = StepChecks()
        self._unchecked: dict[Any, bool] = {}

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        return False  # eager only: no dynamo-disable shim per op (see sim_mode)

    def start(self, locate: Any = None) -> StepChecks:
        self.checks = StepChecks(locate)
        return self.checks

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        rule = _RULES.get(func)
        if rule is None:
            known = self._unchecked.get(func)
            if known is None:
                name = func.overloadpacket.__name__
                known = self._unchecked[func] = (name.rstrip("_") in _UNCHECKED or
                                                 any(part in name for part in _UNCHECKED_PARTS))
            if known:
                self.checks.unchecked[_qualified(func)] += 1
            return func(*args, **kwargs)
        m_rows = None
        if rule == "addmm_":  # the input is overwritten: take its row sums first
            with _disable_current_modes():
                m_rows = row_sums_of(args[0], args[0].shape, Precision.of(args[1].dtype, args[0].dtype,
                                                                           args[0].device.type))
        out = func(*args, **kwargs)
        with _disable_current_modes():
            diff, bound = _check(rule, args, kwargs, out, m_rows)
        if diff is None:
            self.checks.unchecked[_qualified(func)] += 1
        else:
            self.checks.add(_qualified(func), phase(), tuple(out.shape), diff, bound)
        return out


def probe(compute: Any, device: torch.device) -> str | None:
    """Why checksums cannot run under `compute` (a backend's compute context) on `device`, or None: the checks'
    own ops run once on the target, then a small product and its backward run under the mode. Whether the
    products pass is not judged here: that is what the checks are for, step by step."""
    try:
        with compute:
            a = torch.randn(8, 16, device=device)
            b = torch.randn(16, 4, device=device)
            diff, bound = check_product(a, b, a @ b, Precision.of(a.dtype, a.dtype, device.type))
            bool((diff <= bound).all())  # read back: a device's asynchronous error surfaces here
            mode = ChecksumMode()
            checks = mode.start()
            w = torch.randn(16, 4, device=device, requires_grad=True)
            with mode:
                (a.requires_grad_() @ w).sum().backward()
            checks.collect()
            if len(checks) != 3:
                return f"the checks saw {len(checks)} of the 3 products of a small matmul and its backward"
    except Exception as e:  # noqa: BLE001 - any failure means the checks do not run here
        return one_line(e, limit=300)
    return None


def _check(rule: str, args: tuple, kwargs: dict, out: torch.Tensor,
           m_rows: torch.Tensor | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    if rule == "grouped":
        a, b = args[0], args[1]
        offs = args[2] if len(args) > 2 else kwargs.get("offs")
        if (len(args) > 3 and args[3] is not None) or kwargs.get("bias") is not None:
            return None, None
        p = Precision.of(a.dtype, out.dtype, out.device.type)
        got = check_grouped(a, b, out, offs, p)
        return got if got is not None else (None, None)
    if rule == "mm":
        a, b = args[0], args[1]
        return check_product(a, b, out, Precision.of(a.dtype, out.dtype, out.device.type))
    m, a, b = args[0], args[1], args[2]
    beta, alpha = float(kwargs.get("beta", 1.0)), float(kwargs.get("alpha", 1.0))
    p = Precision.of(a.dtype, out.dtype, out.device.type)
    if m_rows is None:
        m_rows = row_sums_of(m, out.shape, p)
    return check_product(a, b, out, p, alpha=alpha, beta=beta, m_rows=m_rows)
