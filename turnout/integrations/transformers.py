"""`transformers.Trainer` with its training steps under a turnout `Guard`.

    from turnout.integrations.transformers import GuardedTrainer
    trainer = GuardedTrainer(model=model, args=args, train_dataset=ds, target="sim:flaky")
    trainer.train()

Each optimizer step of the Trainer's loop becomes one `Guard.step`: the Trainer's own loss (compute_loss, so a
custom loss or `compute_loss_func` still applies) and backward run under the target's checks; the guard steps the
Trainer's optimizer and scheduler only for a healthy step (the loop's own calls to them become no-ops), clips to
`args.max_grad_norm`, rolls back and skips batches, and raises TargetUntrusted after a checkpoint in `run_dir`
(default: `args.output_dir/turnout`). Under `turnout supervise` an untrusted target ends the process with exit
code 86 and the next process resumes from that checkpoint, skipping the batches the record says were consumed.

The Trainer's `global_step` counts batches consumed (including skipped ones); `guard.step_count` counts applied
optimizer steps. The Trainer logs the guard's measured (pre-clip) gradient norm of each applied step, none for a
skipped batch, whose loss is logged as the last applied step's. Gradient accumulation and fp16 loss scaling are
refused: each Trainer step must be one complete forward and backward for the guard to re-run it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer

from turnout.guard import EXIT_UNTRUSTED, Guard, TargetUntrusted


class _Passive:
    """An optimizer or scheduler as the Trainer's loop sees it: `step` does nothing (the guard steps the real one
    when a step is healthy); every other attribute is the real object's."""

    def __init__(self, inner: Any):
        object.__setattr__(self, "_inner", inner)

    def step(self, *args: Any, **kwargs: Any) -> None:
        return None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._inner, name, value)


def _unwrap(obj: Any, attr: str) -> Any:
    """The torch object inside accelerate's wrappers (AcceleratedOptimizer.optimizer, AcceleratedScheduler.scheduler)."""
    while hasattr(obj, attr) and not isinstance(obj, (torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler)):
        obj = getattr(obj, attr)
    return obj


class GuardedTrainer(Trainer):
    """A `transformers.Trainer` whose steps run under a turnout Guard (see the module docstring).

    Takes the Trainer's arguments plus the Guard's: target (None: $TURNOUT_TARGET, else the best accelerator),
    reference, run_dir, health, snapshot_every, checkpoint_every (`guard_options` passes any other Guard keyword)."""

    def __init__(self, *args: Any, target: str | None = None, reference: str | None = None,
                 run_dir: str | Path | None = None, health: Any = None, snapshot_every: int = 10,
                 checkpoint_every: int | None = None, guard_options: dict | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if self.args.gradient_accumulation_steps != 1:
            raise ValueError(f"GuardedTrainer: gradient_accumulation_steps={self.args.gradient_accumulation_steps}; "
                             f"the guard re-runs whole steps, so each Trainer step must be one forward and backward "
                             f"(use a larger per_device_train_batch_size)")
        if self.args.fp16:
            raise ValueError("GuardedTrainer: fp16 loss scaling is not supported (its skipped steps would be judged "
                             "as faults); use bf16 or fp32")
        self.guard_kwargs = {"target": target, "reference": reference, "health": health,
                             "run_dir": Path(run_dir) if run_dir is not None else Path(self.args.output_dir) / "turnout",
                             "snapshot_every": snapshot_every, "checkpoint_every": checkpoint_every,
                             "grad_clip": float(self.args.max_grad_norm or 0.0), **(guard_options or {})}
        self.guard: Guard | None = None
        self._grad_norm: float | None = None  # the guard's (pre-clip) norm of the step just taken; None: skipped
        self._skip = 0  # batches the loop hands over that the guard asked to skip (after a rollback or a resume)

    def _start_guard(self, model: torch.nn.Module) -> None:
        optimizer = _unwrap(self.optimizer, "optimizer")
        scheduler = _unwrap(self.lr_scheduler, "scheduler") if self.lr_scheduler is not None else None
        self.guard = Guard(model, optimizer, lr_scheduler=scheduler, **self.guard_kwargs)
        self.optimizer = _Passive(self.optimizer)
        if self.lr_scheduler is not None:
            self.lr_scheduler = _Passive(self.lr_scheduler)
        self._skip = self.guard.batches_seen  # a resumed run: the batches the record says are consumed

    def training_step(self, model: torch.nn.Module, inputs: dict[str, Any],
                      num_items_in_batch: Any = None) -> torch.Tensor:
        """One guarded optimizer step on this batch (or a skipped batch); returns the loss for logging."""
        if self.guard is None:
            self._start_guard(model)
        if self._skip > 0:  # logged as the last applied step's loss: the Trainer averages what this returns
            self._skip -= 1
            self._grad_norm = None
            recent = self.guard.healer.monitor.loss.values
            return torch.tensor(recent[-1] if recent else float("nan"), device=self.args.device)
        model.train()
        inputs = self._prepare_inputs(inputs)

        def closure(m: torch.nn.Module, batch: dict[str, Any]) -> torch.Tensor:
            with self.compute_loss_context_manager():
                loss = self.compute_loss(m, batch, num_items_in_batch=num_items_in_batch)
            if self.args.n_gpu > 1:
                loss = loss.mean()
            self.accelerator.backward(loss)
            return loss

        out = self.guard.step(closure, inputs)
        self._skip += out.skip_batches
        self._grad_norm = out.grad_norm if out.applied else None
        return torch.tensor(out.loss, device=self.args.device)

    def _clip_grad_norm(self, model: torch.nn.Module) -> float | None:
        """The guard clipped (args.max_grad_norm) and stepped already; the Trainer logs the norm it measured."""
        return self._grad_norm

    def _get_grad_norm(self, model: torch.nn.Module, grad_norm: Any = None) -> float | None:
        return self._grad_norm

    def train(self, *args: Any, **kwargs: Any) -> Any:
        """Trainer.train under the guard; the guard's record is closed (and its report written) however it ends.
        Under `turnout supervise`, an untrusted target exits with code 86 for the supervisor to fail over."""
        try:
            return super().train(*args, **kwargs)
        except TargetUntrusted as e:
            if os.environ.get("TURNOUT_SUPERVISED"):
                print(f"turnout: {e}; exiting {EXIT_UNTRUSTED} for the supervisor to fail over", file=sys.stderr,
                      flush=True)
                raise SystemExit(EXIT_UNTRUSTED) from None
            raise
        finally:
            if self.guard is not None:
                self.guard.close()
                self.guard = None  # a later train() starts a guard again, resuming from its newest checkpoint
