"""Learning-rate schedules as plain functions of the step: nothing to checkpoint, identical after a resume."""

from __future__ import annotations

import math

from turnout.config import TrainSection


def lr_at(step: int, t: TrainSection, scale: float = 1.0) -> float:
    """LR for optimizer step `step` (0-based): linear warmup, then cosine, WSD or constant, times `scale`.

    WSD (warmup-stable-decay) holds the peak until the last `decay_fraction` of steps, then decays linearly to
    `min_lr_ratio * lr`; cosine decays from the end of warmup to the same floor at `steps`.
    """
    peak, floor = t.lr, t.lr * t.min_lr_ratio
    if step < t.warmup_steps:
        return scale * peak * (step + 1) / t.warmup_steps
    if t.schedule == "constant":
        return scale * peak
    if t.schedule == "cosine":
        span = max(t.steps - t.warmup_steps, 1)
        progress = min((step - t.warmup_steps) / span, 1.0)
        return scale * (floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * progress)))
    # wsd
    decay_steps = max(int(round(t.steps * t.decay_fraction)), 1)
    decay_start = t.steps - decay_steps
    if step < decay_start:
        return scale * peak
    progress = min((step - decay_start) / decay_steps, 1.0)
    return scale * (peak + (floor - peak) * progress)
