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

import copy
import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

from turnout.backend import Backend
from turnout.config import Config, ConfigError, from_dict
from turnout.data import Tokenizer
from turnout.errors import CheckpointError
from turnout.model.args import ModelArgs
from turnout.model.flops import flops_per_token, param_counts
from turnout.model.foreign import HFCausalLM, load_hf_causal_lm
from turnout.model.transformer import Transformer
from turnout.train.build import Built, build_dataset, build_model, model_args
from turnout.train.dist import DistInfo
from turnout.train.init import load_init_weights

#: turnout's own BPE vocabulary for a transformers model without a tokenizer: the ids stay below the model's
BPE_VOCAB = 4096


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
    args: ModelArgs | None  # None: a transformers model (`foreign`)
    batches: list[tuple[torch.Tensor, torch.Tensor]]  # steps + 1 pairs of int64 [B, T] inputs and targets
    dataset_id: str
    settings: Settings
    param_count: int = 0
    flops_per_token: float = 0.0
    foreign: HFCausalLM | None = None  # a transformers model's initial state (fp32, CPU), copied for every build
    source: str | None = None  # where that model came from: "hf:DIR"

    @property
    def tokens_per_step(self) -> int:
        return int(self.batches[0][1].numel())

    def build(self, backend: Backend) -> Built:
        """A fresh model + optimizer + runner on `backend`, seeded: identical initial weights on every target."""
        if self.foreign is not None:
            return build_model(self.config, backend, module=copy.deepcopy(self.foreign))
        return build_model(self.config, backend)

    def host_model(self) -> Transformer | HFCausalLM:
        """The same initial weights as `build`, as a plain model on the CPU (fp32 masters)."""
        if self.foreign is not None:
            return copy.deepcopy(self.foreign)
        torch.manual_seed(self.config.train.seed)
        model = Transformer(self.args)
        if self.config.model.init:
            load_init_weights(model, self.config)
        return model

    def shape_model(self) -> Transformer | HFCausalLM:
        """The model as far as its architecture and kernels go, without reading or copying weights (turnout's on
        the meta device): what describe and the numerics fingerprint need."""
        if self.foreign is not None:
            return self.foreign
        with torch.device("meta"):
            return Transformer(self.args)

    def describe(self) -> dict:
        """What is qualified: the architecture, where it came from, its kernel choices, size and block count."""
        model = self.shape_model()
        if self.foreign is None:
            source = f"model.init {self.config.model.init}" if self.config.model.init else \
                f"preset {self.config.model.preset}"
        else:
            source = self.source
        return {"architecture": model.architecture, "source": source, "kernels": model.kernels,
                "params": self.param_count, "blocks": len(model.layers), "mtp_blocks": len(model.mtp)}

    def key(self) -> dict:
        """What makes two workloads the same run (for golden-file keys): config, data (by name and by the token ids
        actually drawn, so a differently trained tokenizer cannot reuse a stale curve) and steps."""
        h = hashlib.sha256()
        for x, y in self.batches:
            h.update(x.numpy().tobytes())
            h.update(y.numpy().tobytes())
        c = self.config.to_dict()
        train = {k: v for k, v in c["train"].items() if k not in _NOT_IN_CURVES}
        model = c["model"]
        if self.foreign is not None:  # the transformers model: its config and its initial weights
            w = hashlib.sha256()
            for t in self.foreign.state_dict().values():
                w.update(t.detach().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
            model = {"hf_config": json.loads(self.foreign.hf.config.to_json_string()), "weights": w.hexdigest()[:16],
                     "kernels": self.foreign.kernels}
        return {"config": {"model": model, "data": c["data"], "train": train}, "dataset": self.dataset_id,
                "tokens": h.hexdigest()[:16], "steps": self.settings.steps}


def load_foreign(spec: str, seed: int) -> tuple[HFCausalLM, str]:
    """The model of `--model hf:DIR` (a transformers model folder; random init from its config.json when it has
    no weights) and its source string. A bad spec or folder raises CheckpointError naming it."""
    kind, sep, path = spec.partition(":")
    if not sep or kind != "hf" or not path:
        raise CheckpointError(f"--model {spec}: expected hf:DIR (a transformers model folder)")
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise CheckpointError(f"--model {spec}: {folder} is not a folder")
    model = load_hf_causal_lm(folder, seed)
    if (folder / "tokenizer.json").is_file():
        tokenizer, vocab = Tokenizer.load(folder), model.hf.config.vocab_size
        if tokenizer.vocab_size > vocab:
            raise CheckpointError(f"{folder / 'tokenizer.json'}: {tokenizer.vocab_size} tokens do not fit the "
                                  f"model's vocab_size {vocab} ({folder / 'config.json'})")
    return model, f"hf:{folder}"


def load_workload(config: Config, settings: Settings, log: Callable[[str], None] | None = None,
                  model: tuple[HFCausalLM, str] | None = None) -> Workload:
    """Tokenise the configured data (cached) and draw steps + 1 fixed batches from the training split. `model`: a
    transformers model and its source (load_foreign) to qualify instead of the configured one; its data is
    tokenised with the tokenizer in its folder, or with turnout's BPE when it has none."""
    cfg = qualify_config(config, settings)
    foreign, source = model if model is not None else (None, None)
    if foreign is None:
        args = model_args(cfg)
        max_len, vocab, tokenizer = args.max_seq_len, None, None
    else:
        args, hf = None, foreign.hf.config
        max_len = getattr(hf, "max_position_embeddings", None) or cfg.train.seq_len
        folder = Path(source.removeprefix("hf:"))
        tokenizer = Tokenizer.load(folder) if (folder / "tokenizer.json").is_file() else None
        vocab = hf.vocab_size if tokenizer is not None else min(hf.vocab_size, BPE_VOCAB)
    if cfg.train.seq_len > max_len:
        raise ConfigError(f"train.seq_len: {cfg.train.seq_len} exceeds the model's max_seq_len {max_len}")
    dataset = build_dataset(cfg, args, DistInfo(), log, vocab_size=vocab, tokenizer=tokenizer)
    sampler = dataset.sampler(cfg.train.seq_len, cfg.train.seed)
    batches = [sampler.next_batch(cfg.train.batch_size, 0, 1) for _ in range(settings.steps + 1)]
    batches = [(x.clone(), y.clone()) for x, y in batches]
    if foreign is None:
        return Workload(cfg, args, batches, Path(dataset.path).name, settings,
                        param_counts(args, mtp=True)[0], flops_per_token(args, cfg.train.seq_len))
    params = sum(p.numel() for p in foreign.parameters())
    return Workload(cfg, None, batches, Path(dataset.path).name, settings, params, 6.0 * params,
                    foreign=foreign, source=source)


def default_golden_dir() -> Path:
    return Path(os.environ.get("TURNOUT_GOLDEN_DIR", "~/.cache/turnout/golden")).expanduser()
