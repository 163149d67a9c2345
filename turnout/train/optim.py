"""AdamW with decoupled weight decay on matrices only (norm weights and vectors are not decayed)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from turnout.config import TrainSection


def build_optimizer(model: torch.nn.Module, t: TrainSection,
                    apart: Sequence[torch.nn.Parameter] = ()) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; 2-D and larger tensors decay, the rest (norms, biases) do not.
    `apart` (expert-parallel splits, plain tensors beside FSDP's DTensors) get a group of their own, decayed:
    a foreach update cannot mix the two kinds."""
    skip = {id(p) for p in apart}
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad and id(p) not in skip:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if apart:
        groups.append({"params": list(apart), "weight_decay": t.weight_decay})
    # foreach keeps the update a handful of kernels; fused AdamW is CUDA/XPU-only in many builds
    return torch.optim.AdamW(groups, lr=t.lr, betas=(t.beta1, t.beta2), eps=1e-8, foreach=True)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = lr
