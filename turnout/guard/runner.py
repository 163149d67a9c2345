"""A user's step closure behind the interface turnout's own loop judges steps through (train/step.py, train/rerun.py).

`ClosureRunner.compute` runs the closure (forward + backward of any `nn.Module`) under the target's compute
context and the product checksums, and measures what the health monitor reads: the loss, the global and per-module
gradient norms, the failed checks. `apply` clips, steps the user's optimizer (an AdamW step is checked by a second
evaluation, as in `turnout train`) and leaves the learning-rate scheduler to the guard. `ClosureReexecutor` re-runs
a step in place or on the reference target: on the same device as the target (a `sim:` target and `cpu`) it runs
the same closure on the same model without the target's faults; on another device it runs the closure on a copy
of the model there, which needs a closure that takes `(model, batch)`.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.module_tracker import ModuleTracker

from turnout.backend import Backend, get_backend
from turnout.backend.checksums import ChecksumMode
from turnout.train import conservation
from turnout.train.dist import local_shard
from turnout.train.optim_check import AdamWCheck, mismatches
from turnout.train.rerun import Reexecutor, average_over_ranks
from turnout.train.step import StepResult, bit_sum


@dataclass
class Work:
    """One step's work: the closure, and the batch it is given when it takes `(model, batch)` (else None)."""

    closure: Callable[..., Any]
    batch: Any = None
    takes_model: bool = False


def takes_model(closure: Callable[..., Any]) -> bool:
    """Whether `closure` is called as closure(model, batch) (two positional parameters) rather than closure()."""
    try:
        params = [p for p in inspect.signature(closure).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty]
    except (TypeError, ValueError):  # a builtin without a signature: called without arguments
        return False
    if len(params) not in (0, 2):
        raise ValueError(f"the step closure takes {len(params)} required argument(s); it must take none "
                         f"(closure()) or two (closure(model, batch))")
    return len(params) == 2


def to_device(batch: Any, device: torch.device) -> Any:
    """`batch` with every tensor in it (nested in dicts, lists, tuples, or a transformers BatchEncoding) on `device`."""
    if torch.is_tensor(batch):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict) or hasattr(batch, "data") and isinstance(getattr(batch, "data"), dict):
        items = batch.items() if isinstance(batch, dict) else batch.data.items()
        return {k: to_device(v, device) for k, v in items}
    if isinstance(batch, (list, tuple)):
        moved = [to_device(v, device) for v in batch]
        return type(batch)(*moved) if hasattr(batch, "_fields") else type(batch)(moved)
    return batch


def module_groups(model: torch.nn.Module) -> list[tuple[str, list[torch.nn.Parameter]]]:
    """Trainable parameters grouped for per-module gradient norms: a repeated block by its index (`model.layers.3`,
    `0` of a Sequential), anything else by its first two module names (`model.embed_tokens`, `lm_head`)."""
    groups: dict[str, list[torch.nn.Parameter]] = {}
    seen: set[int] = set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        parts = name.removeprefix("module.").split(".")
        depth = next((i + 1 for i, part in enumerate(parts[:-1]) if part.isdigit()), min(2, len(parts) - 1))
        key = ".".join(parts[:max(depth, 1)])
        groups.setdefault(key, []).append(p)
    return list(groups.items())


def _checkable_adamw(opt: torch.optim.Optimizer) -> bool:
    """The AdamW step check's formulas hold for torch's AdamW without amsgrad, maximize or tensor learning rates."""
    return type(opt) is torch.optim.AdamW and all(
        not g.get("amsgrad") and not g.get("maximize") and not torch.is_tensor(g.get("lr")) for g in opt.param_groups)


class ClosureRunner:
    """StepRunner's interface for a user's model, optimizer and closure (see the module docstring)."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, backend: Backend, *,
                 grad_clip: float = 0.0, checksums: bool = True):
        self.model = model
        self.inner = getattr(model, "module", model)
        self.optimizer = optimizer
        self.backend = backend
        self.grad_clip = grad_clip
        self.groups = module_groups(self.inner)
        self._trainable = [p for p in model.parameters() if p.requires_grad]
        self.world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        self.sharded = any(type(p).__name__ == "DTensor" for _, ps in self.groups for p in ps)  # FSDP2
        self.checksums = ChecksumMode() if checksums else None
        if self.checksums is not None and self.world > 1 and hasattr(model, "register_comm_hook"):  # DDP
            conservation.install(model, lambda: self.checksums.checks)
        elif self.checksums is not None and self.world > 1 and self.sharded:
            conservation.install_fsdp(model, lambda: self.checksums.checks)
        self.adamw_check = None
        if checksums and _checkable_adamw(optimizer):
            names = {id(p): n.removeprefix("module.") for n, p in model.named_parameters()}
            self.adamw_check = AdamWCheck(optimizer, names)
        self.optimizer_findings: list[list[tuple[str, float]]] = []
        self._buffers: list[tuple[torch.Tensor, torch.Tensor]] = []

    def begin(self) -> None:
        """Before a step's first run: keep the model's buffers (BatchNorm statistics, ...), so a re-run starts from
        the same ones instead of updating them twice."""
        self._buffers = [(b, b.detach().clone()) for b in self.inner.buffers()]

    def _restore_buffers(self) -> None:
        with torch.no_grad():
            for b, saved in self._buffers:
                b.copy_(saved)

    def run_closure(self, work: Work, model: torch.nn.Module, device: torch.device) -> torch.Tensor:
        """Call the closure (on `model`, with the batch on `device`, when it takes them); backward too when the
        closure left no gradient. Returns the loss; a loss that is not a one-element tensor is a ValueError."""
        loss = work.closure(model, to_device(work.batch, device)) if work.takes_model else work.closure()
        if not torch.is_tensor(loss) or loss.numel() != 1:
            what = f"a tensor of shape {list(loss.shape)}" if torch.is_tensor(loss) else type(loss).__name__
            raise ValueError(f"the step closure must return the scalar loss (a one-element tensor); it returned {what}")
        params = self._trainable if model is self.model else [p for p in model.parameters() if p.requires_grad]
        if loss.requires_grad and all(p.grad is None for p in params):
            loss.backward()  # a closure that stops at the loss: its backward runs here, under the same checks
        if params and all(p.grad is None for p in params):
            raise ValueError("the step closure left no gradient in any of the model's parameters: it must run "
                             "backward() on the loss it returns (or return a loss that requires grad)")
        return loss.detach().reshape(())

    def compute(self, work: Work, locate: bool = False) -> StepResult:
        """Run the closure once from the step's starting state and measure it (gradients left in `.grad`)."""
        t0 = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        self.inner.zero_grad(set_to_none=True)
        self._restore_buffers()
        checks = None
        parts = torch.zeros(2, dtype=torch.float64)
        with self.backend.compute():
            with contextlib.ExitStack() as stack:
                if self.checksums is not None:  # above the target's own modes: it sees what the model consumes
                    tracker = stack.enter_context(ModuleTracker()) if locate else None
                    checks = self.checksums.start(tracker)
                    stack.enter_context(self.checksums)
                loss = self.run_closure(work, self.model, self.backend.device())
            parts[0] = loss.double().cpu()
            norms = grad_norms(self.groups, self.sharded, self.world, self.backend.device())
        self.backend.synchronize()
        if checks is not None:
            parts[1] = len(checks.collect())
        if self.world > 1:  # one collective: the mean loss and every rank's failed checks
            dist.all_reduce(parts, op=dist.ReduceOp.SUM)
            parts[0] /= self.world
        total = math.sqrt(sum(v * v for v in norms.values())) if norms else 0.0
        loss_v = float(parts[0])
        return StepResult(loss_v, loss_v, 0.0, 0.0, total, norms, 0, time.perf_counter() - t0, checks=checks,
                          flagged=int(parts[1]))

    def _grad_norms(self) -> dict[str, float]:
        return grad_norms(self.groups, self.sharded, self.world, self.backend.device())

    def grad_checksum(self) -> int:
        """The sum of the gradients' bit patterns (over ranks): a flipped bit anywhere changes it."""
        with self.backend.compute():
            total = bit_sum((p.grad for _, ps in self.groups for p in ps if p.grad is not None), self.backend.device())
        if self.world > 1:
            dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return int(total)

    def apply(self, result: StepResult, lr: float | None = None) -> torch.Tensor:
        """Clip to grad_clip (when set), step the optimizer (AdamW: checked, and taken again from the saved state
        once when the check fails; findings in `optimizer_findings`). `lr` is unused: the user's optimizer and
        scheduler own the learning rate. Returns an empty expert-load tensor (a user's model has none of ours)."""
        with self.backend.compute():
            if self.grad_clip > 0 and result.grad_norm > self.grad_clip:
                grads = [local_shard(p.grad) for _, ps in self.groups for p in ps if p.grad is not None]
                torch._foreach_mul_(grads, self.grad_clip / (result.grad_norm + 1e-6))
            saved = self.adamw_check.before() if self.adamw_check is not None else None
            self.optimizer.step()
            self.optimizer_findings = []
            if saved is not None:
                self.optimizer_findings.append(mismatches(*self.adamw_check.after(saved)))
                if self.optimizer_findings[0]:
                    self.adamw_check.restore(saved)
                    self.optimizer.step()
                    self.optimizer_findings.append(mismatches(*self.adamw_check.after(saved)))
        self.optimizer.zero_grad(set_to_none=True)
        return torch.empty(0)

    def discard(self) -> None:
        """Drop a rejected step's gradients; the weights were never touched."""
        self.optimizer.zero_grad(set_to_none=True)
        self._restore_buffers()


def grad_norms(groups, sharded: bool, world: int, device: torch.device) -> dict[str, float]:
    """Per-group gradient L2 norms, global over ranks; NaN/inf propagate so the monitor sees them."""
    if not groups:
        return {}
    grads, owner = [], []  # every gradient, and the group it belongs to
    for k, (_, params) in enumerate(groups):
        for p in params:
            if p.grad is not None:
                grads.append(local_shard(p.grad))
                owner.append(k)
    sq = torch.zeros(len(groups), dtype=torch.float64, device=device)
    if grads:  # one fused norm per gradient, summed per group on the device; read back once
        norms = torch.stack(torch._foreach_norm(grads, 2, dtype=torch.float32)).to(device, torch.float64)
        sq.index_add_(0, torch.tensor(owner, device=device), norms * norms)
    if sharded and world > 1:
        dist.all_reduce(sq, op=dist.ReduceOp.SUM)
    return {name: math.sqrt(v) if v >= 0 else float("nan") for (name, _), v in zip(groups, sq.cpu().tolist())}


class ClosureReexecutor(Reexecutor):
    """Re-runs a guarded step in place (Reexecutor.in_place) or on the reference target (see the module docstring).

    `reference_spec` is what the health policy reads: the guard clears it for a step whose closure cannot run on
    the reference (a closure without arguments, when the reference is another device)."""

    def __init__(self, runner: ClosureRunner, reference: str):
        super().__init__(runner, reference)
        self.configured = reference
        self.backend: Backend | None = get_backend(reference) if reference else None
        self.same_device = self.backend is not None and self.backend.device() == runner.backend.device()
        self._replica_model: torch.nn.Module | None = None
        self._ref_grads: list[torch.Tensor | None] = []

    def usable_for(self, work: Work) -> str:
        """The reference spec this step can be re-run on ('' when none)."""
        return self.configured if self.configured and (self.same_device or work.takes_model) else ""

    def on_reference(self, work: Work, rng: dict[str, torch.Tensor]) -> StepResult:
        """The step on the reference from the target's current weights; the target's gradients are left as they
        were (the reference's are kept for `reference_grads_into_target`)."""
        runner: ClosureRunner = self.runner
        params = [p for _, ps in runner.groups for p in ps]
        keep = [None if p.grad is None else p.grad.clone() for p in params]
        torch.set_rng_state(rng["cpu"])
        runner._restore_buffers()
        t0 = time.perf_counter()
        if self.same_device:
            model, ref_params, groups = runner.model, params, runner.groups
        else:
            model = self._replica()
            model.load_state_dict({k: v.detach().to(self.backend.device()) for k, v in runner.inner.state_dict().items()})
            groups = module_groups(model)
            ref_params = [p for _, ps in groups for p in ps]
        model.zero_grad(set_to_none=True)
        with self.backend.compute():
            loss = runner.run_closure(work, model, self.backend.device())
        parts = loss.double().cpu().reshape(1)
        if runner.world > 1:
            dist.all_reduce(parts)
            parts /= runner.world
        view = _View(groups, runner.world, self.backend.device())
        result = StepResult(float(parts[0]), float(parts[0]), 0.0, 0.0, 0.0, {}, 0, time.perf_counter() - t0)
        if runner.world > 1 and not self.same_device:
            result = average_over_ranks(view, result)
        norms = grad_norms(groups, False, 1, self.backend.device())
        result.layer_grad_norms, result.grad_norm = norms, math.sqrt(sum(v * v for v in norms.values()))
        self._ref_grads = [None if p.grad is None else p.grad.clone() for p in ref_params]
        for p, g in zip(params, keep):
            p.grad = g
        if not self.same_device:
            model.zero_grad(set_to_none=True)
        runner._restore_buffers()
        return result

    def _replica(self) -> torch.nn.Module:
        if self._replica_model is None:
            self._replica_model = copy.deepcopy(self.runner.inner).to(self.backend.device())
        return self._replica_model

    def reference_grads_into_target(self) -> None:
        """Put the last reference run's gradients in the target's parameters (to apply the reference's step)."""
        params = [p for _, ps in self.runner.groups for p in ps]
        for p, g in zip(params, self._ref_grads):
            p.grad = None if g is None else g.to(p.device, p.dtype).clone()


class _View:
    """What average_over_ranks reads of a runner, for the replica's groups."""

    def __init__(self, groups, world: int, device: torch.device):
        self.groups, self.world, self.device = groups, world, device

    def _grad_norms(self) -> dict[str, float]:
        return grad_norms(self.groups, False, 1, self.device)
