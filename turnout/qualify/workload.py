"""The qualification workload: the user's model and schedule on a small batch, its data, and identical builds.

Qualification runs the *configured* model (preset, overrides, dtype, lr schedule) but on a small batch (by default
at most 2 sequences of 64 tokens), so that tens of steps on two targets fit in a minute on a laptop CPU: what is
being qualified is the accelerator's arithmetic, not the throughput of the full batch.

Host threads: by default qualification pins torch to one intra-op thread while it runs (and restores the count
after). Op replays are hundreds of tiny kernels where thread fork/join costs more than it saves, and on a shared
host OpenMP threads that spin-wait for a busy core make every small op several times slower and the timings
meaningless. A CPU or emulated target is therefore qualified per core; an accelerator is unaffected.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

from turnout.backend import Backend
from turnout.config import Config, ConfigError, from_dict
from turnout.model.args import ModelArgs
from turnout.model.flops import flops_per_token, param_counts
from turnout.model.transformer import Transformer
from turnout.train.build import Built, build_dataset, build_model, model_args
from turnout.train.dist import DistInfo


@dataclass
class Settings:
    """How much evidence to gather. Defaults keep the `tiny` preset under a minute on two CPU cores."""

    steps: int = 30  # training-parity steps; >= 25 so a fault a few tens of steps in still shows
    batch_size: int | None = None  # sequences per step; None: min(train.batch_size, 2)
    seq_len: int | None = None  # tokens per sequence; None: min(train.seq_len, 64)
    determinism_repeats: int = 3  # runs of the same step compared bit for bit
    collectives: bool = True
    collectives_timeout: float = 90.0  # seconds for the whole torchrun job (start-up included)
    golden_dir: str | None = None  # None: $TURNOUT_GOLDEN_DIR or ~/.cache/turnout/golden
    use_golden: bool = True  # reuse a stored reference curve when one matches
    shipped_golden: bool = True  # also look in the curves shipped with turnout (turnout/qualify/golden)
    hang_timeout: float = 30.0  # a target step (compute or optimizer step) that takes longer counts as a hang
    min_speed: float = 0.1  # training below this share of the reference's tokens/s is "too slow"
    threads: int = 1  # torch intra-op threads while qualifying (0: leave as is); see the module docstring
    sdc_steps: int = 12  # steps of the SDC-coverage campaign (each also a clean and a jittered false-alarm sample)
    sdc_flips: int = 24  # single-bit flips it injects into product outputs

    def check(self) -> Settings:
        for key, lo in (("steps", 2), ("determinism_repeats", 2)):
            if getattr(self, key) < lo:
                raise ConfigError(f"--{key.replace('_', '-')}: expected an integer >= {lo}, got {getattr(self, key)}")
        for key in ("batch_size", "seq_len"):
            v = getattr(self, key)
            if v is not None and v < (2 if key == "seq_len" else 1):
                raise ConfigError(f"--{key.replace('_', '-')}: expected a positive integer, got {v}")
        return self

    def to_dict(self) -> dict:
        return asdict(self)


def qualify_config(config: Config, settings: Settings) -> Config:
    """The user's config with the qualification batch: batch_size x seq_len, one micro-batch, same schedule."""
    raw = config.to_dict()
    t = raw["train"]
    t["batch_size"] = settings.batch_size or min(config.train.batch_size, 2)
    t["seq_len"] = settings.seq_len or min(config.train.seq_len, 64)
    t["grad_accum"] = 1
    return from_dict(raw)


#: train fields that change no number of a training curve (logging and evaluation cadence); the health, ckpt
#: and other sections do not either (checks read, they never write), so a golden curve survives their changes
_NOT_IN_CURVES = frozenset({"log_interval", "log_to", "eval_interval", "eval_batches"})


@dataclass
class Workload:
    """Everything the stages share: the qualification config, model args, fixed batches and the data's identity."""

    config: Config
    args: ModelArgs
    batches: list[tuple[torch.Tensor, torch.Tensor]]  # steps + 1 pairs of int64 [B, T] inputs and targets
    dataset_id: str
    settings: Settings
    param_count: int = 0
    flops_per_token: float = 0.0

    @property
    def tokens_per_step(self) -> int:
        return int(self.batches[0][1].numel())

    def build(self, backend: Backend) -> Built:
        """A fresh model + optimizer + runner on `backend`, seeded: identical initial weights on every target."""
        return build_model(self.config, backend)

    def host_model(self) -> Transformer:
        """The same initial weights as `build`, as a plain Transformer on the CPU (fp32 masters)."""
        torch.manual_seed(self.config.train.seed)
        return Transformer(self.args)

    def key(self) -> dict:
        """What makes two workloads the same run (for golden-file keys): config, data (by name and by the token ids
        actually drawn, so a differently trained tokenizer cannot reuse a stale curve) and steps."""
        h = hashlib.sha256()
        for x, y in self.batches:
            h.update(x.numpy().tobytes())
            h.update(y.numpy().tobytes())
        c = self.config.to_dict()
        train = {k: v for k, v in c["train"].items() if k not in _NOT_IN_CURVES}
        return {"config": {"model": c["model"], "data": c["data"], "train": train}, "dataset": self.dataset_id,
                "tokens": h.hexdigest()[:16], "steps": self.settings.steps}


def load_workload(config: Config, settings: Settings, log: Callable[[str], None] | None = None) -> Workload:
    """Tokenise the configured data (cached) and draw steps + 1 fixed batches from the training split."""
    cfg = qualify_config(config, settings)
    args = model_args(cfg)
    if cfg.train.seq_len > args.max_seq_len:
        raise ConfigError(f"train.seq_len: {cfg.train.seq_len} exceeds the model's max_seq_len {args.max_seq_len}")
    dataset = build_dataset(cfg, args, DistInfo(), log)
    sampler = dataset.sampler(cfg.train.seq_len, cfg.train.seed)
    batches = [sampler.next_batch(cfg.train.batch_size, 0, 1) for _ in range(settings.steps + 1)]
    batches = [(x.clone(), y.clone()) for x, y in batches]
    return Workload(cfg, args, batches, Path(dataset.path).name, settings,
                    param_counts(args, mtp=True)[0], flops_per_token(args, cfg.train.seq_len))


def default_golden_dir() -> Path:
    return Path(os.environ.get("TURNOUT_GOLDEN_DIR", "~/.cache/turnout/golden")).expanduser()
