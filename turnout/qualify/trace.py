"""The model's own op set: every aten op one training step and one inference call of the configured model dispatch.

A recording TorchDispatchMode sees each op below autograd, so backward kernels (`_softmax_backward_data`, the
`mm`s of a linear's gradient, `embedding_dense_backward`) appear as ops of their own. Each op is marked by where
it was seen: "forward" / "backward" (the training step's two halves) and "inference" (a prefill plus one decode
step on the model's KV cache, as a serving engine runs the model). Inference use is what serving needs; training
use is everything in the training step (the fused cross-entropy, for one, computes gradients in its forward).
Calls are deduplicated by (op overload, tensor shapes and dtypes, non-tensor arguments); the first call of each
keeps a copy of its inputs, so integer/index arguments stay valid and constrained inputs can be replayed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves, tree_map

from turnout.backend import Backend
from turnout.qualify.workload import Workload

#: pure bookkeeping: no arithmetic and nothing a device could get wrong
_IGNORED = {"detach", "alias", "lift_fresh", "_local_scalar_dense", "set_", "copy_", "empty", "empty_strided",
            "empty_like", "new_empty", "new_empty_strided"}


@dataclass
class TracedOp:
    """One distinct call: the op, its saved inputs (CPU copies), where it was seen, and how often."""

    func: Any  # torch._ops.OpOverload
    args: tuple
    kwargs: dict
    uses: set[str] = field(default_factory=set)  # "forward", "backward" (training step), "inference"
    calls: int = 0
    grad: bool = False  # some call had an input that requires grad (its backward runs in training)

    @property
    def name(self) -> str:
        """'aten.mm.default' without the namespace: 'mm.default'."""
        return str(self.func).removeprefix("aten.")

    @property
    def packet(self) -> str:
        """The op without overload: 'mm', '_softmax_backward_data'."""
        return self.func.overloadpacket.__name__

    @property
    def is_view(self) -> bool:
        return bool(getattr(self.func, "is_view", False))

    @property
    def training(self) -> bool:
        return bool(self.uses & {"forward", "backward"})

    @property
    def inference(self) -> bool:
        return "inference" in self.uses

    @property
    def is_inplace(self) -> bool:
        return self.func._schema.is_mutable

    def signature(self) -> str:
        """'[2, 64, 256] f32, [256, 256] f32' -- the tensor arguments, for tables."""
        parts = []

        def one(v: Any) -> None:
            if isinstance(v, torch.Tensor):
                parts.append(f"{list(v.shape)} {_short(v.dtype)}")
            elif isinstance(v, (list, tuple)) and any(isinstance(x, torch.Tensor) for x in v):
                parts.append("[" + ", ".join(f"{list(x.shape)} {_short(x.dtype)}" for x in v
                                             if isinstance(x, torch.Tensor)) + "]")
        for a in (*self.args, *self.kwargs.values()):
            one(a)
        return ", ".join(parts)


def _short(dtype: torch.dtype) -> str:
    return {torch.float32: "f32", torch.float64: "f64", torch.bfloat16: "bf16", torch.float16: "f16",
            torch.int64: "i64", torch.int32: "i32", torch.bool: "bool"}.get(dtype, str(dtype).removeprefix("torch."))


def _describe(v: Any) -> Any:
    """A hashable key part for one argument: tensors by shape/dtype, everything else by value."""
    if isinstance(v, torch.Tensor):
        return ("T", tuple(v.shape), str(v.dtype))
    if isinstance(v, (list, tuple)):
        return tuple(_describe(x) for x in v)
    if isinstance(v, float):
        return ("f", repr(v))
    if isinstance(v, (int, bool, str, type(None))):
        return v
    return str(v)  # dtypes, devices, layouts, memory formats


class _Recorder(TorchDispatchMode):
    """Records the first call of each distinct (op, shapes, dtypes, scalars) with copies of its inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.phase = "forward"
        self.ops: dict[tuple, TracedOp] = {}

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        return False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace == "aten" and func.overloadpacket.__name__ not in _IGNORED:
            key = (str(func), _describe(args), _describe(kwargs))
            op = self.ops.get(key)
            if op is None:
                # copy before the call: an in-place op would otherwise save its own output
                copy = lambda t: t.detach().clone() if isinstance(t, torch.Tensor) else t  # noqa: E731
                op = self.ops[key] = TracedOp(func, tree_map(copy, args), tree_map(copy, kwargs))
            op.uses.add(self.phase)
            op.calls += 1
            if not op.grad and torch.is_grad_enabled():
                op.grad = any(isinstance(t, torch.Tensor) and t.requires_grad for t in tree_leaves((args, kwargs)))
        return func(*args, **kwargs)


def trace_step(work: Workload, host: Backend, dtype: torch.dtype) -> list[TracedOp]:
    """The distinct aten calls of one training forward + backward, then of one inference prefill + decode step, of
    the workload's model on the host CPU in `dtype` (autocast when not fp32), in first-seen order."""
    model = work.host_model()
    x, y = work.batches[0]
    rec = _Recorder()
    with rec:
        with host.autocast(dtype):
            out = model(x, targets=y)
        rec.phase = "backward"
        out.loss.backward()
    model.eval()
    B, T = x.shape
    cache = model.new_cache(B, T + 1, dtype)  # the model's own kind: turnout's latent cache, or transformers' KV cache
    rec.phase = "inference"
    with rec, torch.no_grad(), host.autocast(dtype):
        model(x, cache=cache, start_pos=0)  # prefill
        model(y[:, -1:], cache=cache, start_pos=T)  # one decode step
    return list(rec.ops.values())
