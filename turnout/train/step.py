"""One optimizer step, split in two so a result can be judged before it is applied.

`compute` runs forward + backward over the step's micro-batches and measures (losses, global and per-layer
gradient norms, and with checksums on, the verdict on every matrix product it ran) without touching the weights;
`apply` clips, steps AdamW and moves the router biases. Between the two, the health monitor may reject the
result and re-run it (in place, or on a reference target).
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch.utils.module_tracker import ModuleTracker

from turnout.backend import Backend
from turnout.backend.checksums import ChecksumMode, StepChecks
from turnout.train import conservation
from turnout.train.dist import local_shard
from turnout.train.expert_parallel import ExpertLayout, ExpertParallelExperts
from turnout.train.optim_check import AdamWCheck, mismatches
from turnout.train.optim import set_lr


@dataclass
class StepResult:
    """What one step measured; losses are means over ranks, norms are global (before clipping)."""

    loss: float
    ce: float
    mtp: float
    balance: float
    grad_norm: float
    layer_grad_norms: dict[str, float]
    tokens: int  # global tokens in the step
    seconds: float = 0.0  # compute time (forward + backward)
    extra: dict = field(default_factory=dict)
    checks: StepChecks | None = None  # this rank's product checks (None: checksums off)
    flagged: int = 0  # products whose checksum failed, summed over ranks

    @property
    def finite(self) -> bool:
        return math.isfinite(self.loss) and math.isfinite(self.grad_norm)


def layer_groups(model: torch.nn.Module) -> list[tuple[str, list[torch.nn.Parameter]]]:
    """Trainable parameters grouped for per-layer gradient norms: embed, layers.i, mtp.k, norm, head (a model with
    a `layer_group(name)` method, such as a wrapped transformers model, names its own groups)."""
    groups: dict[str, list[torch.nn.Parameter]] = {}
    seen: set[int] = set()
    group_of = getattr(getattr(model, "module", model), "layer_group", None)
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        name = name.removeprefix("module.")
        parts = name.split(".")
        key = group_of(name) if group_of else ".".join(parts[:2]) if parts[0] in ("layers", "mtp") else parts[0]
        groups.setdefault(key, []).append(p)
    return list(groups.items())


_INT_OF_SIZE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def bit_sum(tensors, device: torch.device) -> torch.Tensor:
    """The sum of the tensors' bit patterns read as integers, a one-element int64 tensor on `device`: a flipped bit
    anywhere changes it (losses and norms can hide one in a low mantissa bit)."""
    total = torch.zeros(1, dtype=torch.int64, device=device)
    for t in tensors:
        t = local_shard(t).detach().contiguous()
        total += t.view(_INT_OF_SIZE[t.element_size()]).sum(dtype=torch.int64)
    return total


class StepRunner:
    """Runs compute/apply for a (possibly wrapped) model on one backend."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, backend: Backend,
                 dtype: torch.dtype, grad_clip: float, sharded: bool, checksums: bool = False,
                 experts: ExpertLayout | None = None):
        self.model = model
        self.inner = getattr(model, "module", model)
        self.optimizer = optimizer
        self.backend = backend
        self.dtype = dtype
        self.grad_clip = grad_clip
        self.sharded = sharded  # FSDP2: gradients are shards, so squared norms are summed over ranks
        self.groups = layer_groups(self.inner)
        self.experts = experts  # expert parallelism: split weights, their gradients reduced here
        self.split = {id(p) for p in experts.params.values()} if experts else set()
        self.world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        self.checksums = ChecksumMode() if checksums else None
        if self.checksums is not None and self.world > 1 and hasattr(model, "register_comm_hook"):  # DDP
            conservation.install(model, lambda: self.checksums.checks)
        elif self.checksums is not None and self.world > 1 and sharded:  # FSDP2
            conservation.install_fsdp(model, lambda: self.checksums.checks)
        if self.checksums is not None and experts is not None:  # the token exchanges' conservation check
            for m in self.inner.modules():
                if isinstance(m, ExpertParallelExperts):
                    m.checks = lambda: self.checksums.checks
        self.adamw_check = None  # the AdamW step's second evaluation, named by parameter
        if checksums:
            names = {id(p): n.removeprefix("module.") for n, p in model.named_parameters()}
            self.adamw_check = AdamWCheck(optimizer, names)
        self.optimizer_findings: list[list[tuple[str, float]]] = []  # the last apply's checks: first run, re-run

    def compute(self, micro_batches: list[tuple[torch.Tensor, torch.Tensor]], locate: bool = False) -> StepResult:
        """Forward + backward over this rank's micro-batches, leaving averaged gradients in `.grad`. With
        checksums on, every product is verified; `locate` also names the module each product ran in."""
        t0 = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        self.inner.reset_expert_loads()
        device = self.backend.device()
        parts = torch.zeros(5, dtype=torch.float64)
        n = len(micro_batches)
        checks = None
        with self.backend.compute():
            with contextlib.ExitStack() as stack:
                if self.checksums is not None:  # above the target's own modes: it sees what the model consumes
                    tracker = stack.enter_context(ModuleTracker()) if locate else None
                    checks = self.checksums.start(tracker)
                    stack.enter_context(self.checksums)
                for i, (x, y) in enumerate(micro_batches):
                    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                    sync = contextlib.nullcontext() if i == n - 1 or not hasattr(self.model, "no_sync") \
                        else self.model.no_sync()
                    with sync:
                        with self.backend.autocast(self.dtype):
                            out = self.model(x, targets=y)
                        (out.loss / n).backward()
                    parts[:4] += torch.stack([out.loss, out.ce, out.mtp, out.balance]).detach().double().cpu() / n
            if self.experts is not None:
                self.experts.reduce_grads()
            norms = self._grad_norms()
        self.backend.synchronize()
        if checks is not None:
            parts[4] = len(checks.collect())
        if self.world > 1:  # one collective: the losses' mean and every rank's failed checks
            dist.all_reduce(parts, op=dist.ReduceOp.SUM)
            parts[:4] /= self.world
        tokens = sum(int(y.numel()) for _, y in micro_batches) * self.world
        total = math.sqrt(sum(v * v for v in norms.values())) if norms else 0.0
        loss, ce, mtp, bal = (float(v) for v in parts[:4])
        return StepResult(loss, ce, mtp, bal, total, norms, tokens, time.perf_counter() - t0, checks=checks,
                          flagged=int(parts[4]))

    def _grad_norms(self) -> dict[str, float]:
        """Per-group gradient L2 norms (global over ranks); NaN/inf propagate so the monitor sees them."""
        def sq_sum(grads: list[torch.Tensor]) -> torch.Tensor:
            return torch.stack([g.float().pow(2).sum() for g in grads]).sum() if grads else torch.zeros(())

        sq, split = [], []
        for _, params in self.groups:
            grads = [p for p in params if p.grad is not None]
            sq.append(sq_sum([local_shard(p.grad) for p in grads if id(p) not in self.split]))
            split.append(sq_sum([p.grad for p in grads if id(p) in self.split]))
        sq = torch.stack(sq).to(torch.float64)
        if self.sharded and self.world > 1:
            sq = sq.to(self.backend.device())
            dist.all_reduce(sq, op=dist.ReduceOp.SUM)
        if self.experts is not None and self.world > 1:  # each expert's gradient lives on one rank of the group
            split = torch.stack(split).to(torch.float64).to(self.backend.device())
            dist.all_reduce(split, op=dist.ReduceOp.SUM, group=self.experts.ep_group)
            sq = sq.to(split.device) + split
        return {name: math.sqrt(v) if v >= 0 else float("nan") for (name, _), v in zip(self.groups, sq.cpu().tolist())}

    def grad_checksum(self) -> int:
        """A bit-level fingerprint of the current gradients: the sum of their bit patterns read as integers (over
        ranks). A flipped bit anywhere changes it; losses and norms can hide a flip in a low mantissa bit."""
        with self.backend.compute():
            total = bit_sum((p.grad for _, ps in self.groups for p in ps if p.grad is not None), self.backend.device())
        if self.world > 1:
            dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return int(total)

    def apply(self, result: StepResult, lr: float) -> torch.Tensor:
        """Clip to grad_clip, step AdamW at `lr`, update router biases from the global expert loads; returns them.
        With checksums on, the AdamW step is checked by a second evaluation (turnout.train.optim_check); what it
        found is left in `optimizer_findings`."""
        with self.backend.compute():
            if self.grad_clip > 0 and result.grad_norm > self.grad_clip:
                coef = self.grad_clip / (result.grad_norm + 1e-6)
                grads = [local_shard(p.grad) for _, ps in self.groups for p in ps if p.grad is not None]
                torch._foreach_mul_(grads, coef)
            set_lr(self.optimizer, lr)
            saved = self.adamw_check.before() if self.adamw_check is not None else None
            self.optimizer.step()
            self.optimizer_findings = []
            if saved is not None:  # checked: a failed step is taken again from the saved state, and checked again
                self.optimizer_findings.append(mismatches(*self.adamw_check.after(saved)))
                if self.optimizer_findings[0]:
                    self.adamw_check.restore(saved)
                    self.optimizer.step()
                    self.optimizer_findings.append(mismatches(*self.adamw_check.after(saved)))
            loads = self.inner.update_expert_bias()
        self.optimizer.zero_grad(set_to_none=True)
        return loads

    def discard(self) -> None:
        """Drop a rejected step's gradients and expert-load counts; the weights were never touched."""
        self.optimizer.zero_grad(set_to_none=True)
        self.inner.reset_expert_loads()
