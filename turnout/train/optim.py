"""AdamW with decoupled weight decay on matrices only (norm weights and vectors are not decayed)."""

from __future__ import annotations

import torch

from turnout.config import TrainSection


def build_optimizer(model: torch.nn.Module, t: TrainSection) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; 2-D and larger tensors decay, the rest (norms, biases) do not."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # foreach keeps the update a handful of kernels; fused AdamW is CUDA/XPU-only in many builds
    return torch.optim.AdamW(groups, lr=t.lr, betas=(t.beta1, t.beta2), eps=1e-8, foreach=True)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = lr
