"""What a step leaves in the record: one metrics row (loss and its parts, gradient norms, lr, speed, MFU,
expert load, memory, data position) to RUN/metrics.jsonl and to the sinks `train.log_to` names.

MFU is model FLOPs per token x tokens/s over the measured matmul peak of the target's compute dtype times the
world size (the peak is measured, not taken from a datasheet: backend.matmul_peak).
"""

from __future__ import annotations

import time

import torch

from turnout.config import Config
from turnout.report.jsonl import JsonlWriter
from turnout.report.rundir import RunDir
from turnout.report.tensorboard import TensorBoardSink
from turnout.train.build import Built
from turnout.train.step import StepResult


class MetricsLog:
    """metrics.jsonl, and a TensorBoard copy when asked; rank 0 writes, other ranks hold a disabled log."""

    def __init__(self, run: RunDir, config: Config, enabled: bool):
        self.jsonl = JsonlWriter(run.metrics, enabled=enabled)
        self.board = TensorBoardSink(run.tensorboard) if enabled and "tensorboard" in config.train.log_to else None

    def write(self, row: dict) -> None:
        self.jsonl.write(row)
        if self.board is not None:
            self.board.metrics(row)

    def event(self, event: dict) -> None:
        """An event for the sinks that show events next to metrics (metrics.jsonl does not)."""
        if self.board is not None:
            self.board.event(event)

    def flush(self) -> None:
        if self.board is not None:
            self.board.flush()

    def close(self) -> None:
        self.jsonl.close()
        if self.board is not None:
            self.board.close()


class StepRecorder:
    """Turns an applied step into its metrics row."""

    def __init__(self, built: Built, config: Config, log: MetricsLog):
        self.built, self.log = built, log
        main = built.info.is_main
        self.peak = built.backend.matmul_peak(built.backend.compute_dtype_name(config)) if main else 0.0

    def train_row(self, step: int, r: StepResult, lr: float, loads: torch.Tensor, seconds: float,
                  samples: int) -> dict:
        """Write and return the row of an applied step; `loads` is [MoE layers, experts] routed-token counts."""
        b = self.built
        tps = r.tokens / seconds if seconds > 0 else 0.0
        mfu = b.flops_per_token * tps / (self.peak * b.info.world_size) if self.peak else 0.0
        frac = loads / loads.sum(-1, keepdim=True).clamp(min=1) if loads.numel() else loads
        cv = float((frac.std(-1) / frac.mean(-1).clamp(min=1e-12)).mean()) if loads.numel() else 0.0
        row = {"kind": "train", "step": step, "time": time.time(), "target": b.backend.name,
               "loss": r.loss, "ce": r.ce, "mtp": r.mtp, "balance": r.balance, "grad_norm": r.grad_norm,
               "grad_norm_layers": r.layer_grad_norms, "lr": lr, "tokens_per_s": tps, "mfu": mfu,
               "step_time": seconds, "samples": samples,
               "expert_load": [[round(v, 5) for v in row] for row in frac.tolist()], "expert_load_cv": cv,
               "memory": b.backend.memory_stats().get("peak_allocated", 0)}
        self.log.write(row)
        return row

    def eval_row(self, step: int, val_loss: float) -> dict:
        row = {"kind": "eval", "step": step, "time": time.time(), "target": self.built.backend.name,
               "val_loss": val_loss}
        self.log.write(row)
        return row
