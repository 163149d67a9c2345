"""The guard's own last good states: copies in memory for a quick rollback, DCP checkpoints in the run folder for a
rollback past them, a restart and a failover to another target.

A checkpoint of a guarded model is an ordinary turnout checkpoint (turnout.ckpt: DCP shards, a manifest with file
hashes and a digest of itself); its `model_args` describe the user's model by class and parameter shapes instead of
turnout's ModelArgs, so a resume with another model is refused naming the first difference.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Any

import torch


def model_fingerprint(model: torch.nn.Module) -> dict:
    """What identifies a user's model in a manifest: its class and every parameter's name and shape."""
    inner = getattr(model, "module", model)
    return {"class": f"{type(inner).__module__}.{type(inner).__qualname__}",
            "parameters": {n: list(p.shape) for n, p in inner.named_parameters()}}


def fingerprint_difference(saved: dict, ours: dict) -> str | None:
    """The first difference between a checkpoint's model fingerprint and this model's, or None."""
    a, b = saved.get("parameters", {}), ours["parameters"]
    for name in sorted(set(a) | set(b)):
        if name not in b:
            return f"parameter {name!r} is in the checkpoint but not in the model"
        if name not in a:
            return f"parameter {name!r} of the model is not in the checkpoint"
        if list(a[name]) != list(b[name]):
            return f"parameter {name!r} has shape {list(a[name])} in the checkpoint, {list(b[name])} in the model"
    return None


def scheduler_state(scheduler: Any) -> dict | None:
    """A learning-rate scheduler's state as JSON-ready data (manifests hold no pickles); ValueError when it holds
    something JSON cannot carry (a callable, a tensor)."""
    if scheduler is None:
        return None
    state = scheduler.state_dict()
    try:
        return json.loads(json.dumps(state))
    except (TypeError, ValueError) as e:
        raise ValueError(f"lr_scheduler {type(scheduler).__name__}: its state_dict() is not JSON data ({e}); a "
                         f"guard keeps it in checkpoint manifests, which hold no pickles") from None


@dataclass
class Snapshot:
    """One good state in memory: after `step` applied steps, with `batches` batches of the loop consumed."""

    step: int
    batches: int
    model: dict
    optimizer: dict
    scheduler: dict | None

    @classmethod
    def take(cls, step: int, batches: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
             scheduler: Any, into: "Snapshot | None" = None) -> "Snapshot":
        """A copy of the current state; `into`, a snapshot being dropped, lends its tensors as the buffers (no
        fresh allocation of model-sized memory every snapshot, which glibc returns and re-faults each time)."""
        with torch.no_grad():
            weights = _copy_tree(model.state_dict(), into.model if into else None)
            opt = _copy_tree(optimizer.state_dict(), into.optimizer if into else None)
        return cls(step, batches, weights, opt, scheduler_state(scheduler))

    def restore(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any) -> None:
        with torch.no_grad():
            model.load_state_dict(self.model)
        optimizer.load_state_dict(_copy_tree(self.optimizer, None))
        if scheduler is not None and self.scheduler is not None:
            scheduler.load_state_dict(copy.deepcopy(self.scheduler))


def _copy_tree(src: Any, into: Any) -> Any:
    """A deep copy of a state dict: tensors copied into `into`'s tensor at the same place when it has the same
    shape, dtype and device, else cloned; other values deep-copied."""
    if torch.is_tensor(src):
        if torch.is_tensor(into) and into.shape == src.shape and into.dtype == src.dtype \
                and into.device == src.device and into.layout == src.layout and not into.is_sparse:
            return into.copy_(src.detach())
        return src.detach().clone()
    if isinstance(src, dict):
        other = into if isinstance(into, dict) else {}
        return {k: _copy_tree(v, other.get(k)) for k, v in src.items()}
    if isinstance(src, (list, tuple)):
        other = into if isinstance(into, (list, tuple)) and len(into) == len(src) else [None] * len(src)
        return type(src)(_copy_tree(v, o) for v, o in zip(src, other))
    return copy.deepcopy(src)


class Snapshots:
    """The newest `keep` in-memory snapshots (none when keep is 0)."""

    def __init__(self, keep: int):
        self.keep = keep
        self.items: list[Snapshot] = []

    def take(self, step: int, batches: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
             scheduler: Any) -> None:
        """Keep the current state, in the buffers of the snapshot it pushes out (when one goes)."""
        if not self.keep:
            return
        kept = [s for s in self.items if s.step < step]
        out = kept[0] if len(kept) >= self.keep else None
        if out is not None:
            self.items.remove(out)
        self.add(Snapshot.take(step, batches, model, optimizer, scheduler, into=out))

    def add(self, snap: Snapshot) -> None:
        if self.keep:
            self.items = [s for s in self.items if s.step < snap.step][-(self.keep - 1):] if self.keep > 1 else []
            self.items.append(snap)

    def newest(self, before_step: int | None = None) -> Snapshot | None:
        for s in reversed(self.items):
            if before_step is None or s.step < before_step:
                return s
        return None

    def drop_after(self, step: int) -> None:
        """Forget snapshots past `step` (after a rollback to it, they belong to a discarded future)."""
        self.items = [s for s in self.items if s.step <= step]
