"""Diagnosis by re-execution (after Megatron's rerun state machine, with a reference target as the other GPU).

A suspect step is re-executed with the same weights, data and RNG state:
- in place, on the same target: a different result means a transient fault (likely hardware); the same
  result means the problem reproduces;
- on a reference target (e.g. `cpu`), from the same state: the same result as the target means a real
  numerical problem in model or data; a different one means the target computes wrongly.
Results are compared on (loss, ce, global grad norm, per-layer grad norms) by their largest relative difference.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from turnout.backend import Backend, get_backend
from turnout.model.transformer import Transformer
from turnout.train.step import StepResult, StepRunner


def result_vector(r: StepResult) -> list[float]:
    return [r.loss, r.ce, r.grad_norm, *(r.layer_grad_norms[k] for k in sorted(r.layer_grad_norms))]


def relative_difference(a: StepResult, b: StepResult) -> float:
    """Largest relative difference between two step results; inf when exactly one side is non-finite, 0 when both
    are non-finite in the same places (two NaNs agree, as in Megatron's comparison)."""
    worst = 0.0
    for x, y in zip(result_vector(a), result_vector(b)):
        fx, fy = math.isfinite(x), math.isfinite(y)
        if not fx or not fy:
            if fx != fy or (not fx and not fy and not (math.isnan(x) and math.isnan(y)) and x != y):
                return math.inf
            continue
        worst = max(worst, abs(x - y) / max(abs(x), abs(y), 1e-12))
    return worst


class GradSnapshot:
    """A copy of the current gradients, to apply a result after other runs have overwritten `.grad`."""

    def __init__(self, runner: StepRunner):
        self.params = [p for _, ps in runner.groups for p in ps]
        self.grads = [None if p.grad is None else p.grad.detach().clone() for p in self.params]
        # a model of turnout's own also counts routed tokens per expert; a user's model (turnout.guard) may not
        self.loads = runner.inner.expert_loads() if hasattr(runner.inner, "expert_loads") else None

    def restore(self, runner: StepRunner) -> None:
        for p, g in zip(self.params, self.grads):
            p.grad = None if g is None else g.clone()
        if self.loads is not None:
            for m, load in zip(runner.inner.moe_layers(), self.loads):
                m.loads.copy_(load)


def average_over_ranks(runner: StepRunner, result: StepResult) -> StepResult:
    """A reference run's result made global: each rank computed its own micro-batches on an unwrapped replica, so
    its gradients are averaged over ranks and the norms taken again (a no-op in one process)."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return result
    grads = [p.grad for _, ps in runner.groups for p in ps if p.grad is not None]
    flat = torch.cat([g.flatten() for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset: offset + g.numel()].view_as(g))
        offset += g.numel()
    runner.world = 1  # losses were already averaged; norms now come from averaged gradients
    norms = runner._grad_norms()
    runner.world = dist.get_world_size()
    result.layer_grad_norms = norms
    result.grad_norm = math.sqrt(sum(v * v for v in norms.values()))
    return result


class Reexecutor:
    """Re-runs a step in place, or on a lazily built reference replica of the model."""

    def __init__(self, runner: StepRunner, reference: str):
        self.runner = runner
        self.reference_spec = reference
        self._ref: tuple[Backend, Transformer, StepRunner] | None = None

    def in_place(self, step: int, batches, rng: dict[str, torch.Tensor], locate: bool = False) -> StepResult:
        """The same step again on the same target: same data, RNG and step number (sim faults see the same step);
        `locate` names the module of each checked product."""
        b = self.runner.backend
        b.set_rng_state(rng)
        b.set_step(step)
        return self.runner.compute(batches, locate=locate)

    def _replica(self) -> tuple[Backend, Transformer, StepRunner]:
        if self._ref is None:
            backend = get_backend(self.reference_spec)
            inner = self.runner.inner
            model = Transformer(inner.args).to(backend.device())
            opt = torch.optim.SGD(model.parameters(), lr=0.0)  # never stepped: only gradients are compared
            runner = StepRunner(model, opt, backend, torch.float32, grad_clip=0.0, sharded=False)
            self._ref = (backend, model, runner)
        return self._ref

    def on_reference(self, batches, rng: dict[str, torch.Tensor]) -> StepResult:
        """The same step on the reference target, from the target's current weights and buffers, in fp32.

        Each rank computes its own micro-batches; gradients are averaged over ranks so the norms are global."""
        backend, model, runner = self._replica()
        state = get_model_state_dict(self.runner.model, options=StateDictOptions(full_state_dict=True))
        split = self.runner.experts
        if split is not None:  # expert parallelism: the replica holds every expert
            state.update({n: split.gathered(p.detach()) for n, p in split.params.items()})
        model.load_state_dict({k: v.to(backend.device()) for k, v in state.items()})
        torch.set_rng_state(rng["cpu"])
        result = runner.compute(batches)  # one rank's view: losses are all-reduced, norms are local
        return average_over_ranks(runner, result)

    def reference_grads_into_target(self) -> None:
        """Copy the reference replica's gradients into the target's parameters (to apply the reference's step).
        Unsharded models only (one process or DDP)."""
        _, model, _ = self._replica()
        ref = dict(model.named_parameters())
        split = self.runner.experts.params if self.runner.experts is not None else {}
        for name, p in self.runner.inner.named_parameters():
            g = ref[name].grad
            if g is not None and name in split:
                g = self.runner.experts.local_part(g)
            p.grad = None if g is None else g.to(p.device, p.dtype).clone()
