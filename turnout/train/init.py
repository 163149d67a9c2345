"""Starting a run from a model someone already trained (`model.init`, `turnout train --init PATH`).

The source is an HF DeepseekV3 directory (what transformers' `save_pretrained`, DeepSeek's releases and `turnout
export` write) or a turnout run or checkpoint folder. What is taken from it: the architecture (its ModelArgs; the
preset is not used), the weights, and the tokenizer beside them, which the training data is then encoded with (a
pretrained embedding means nothing under another tokenizer). What is not: the optimizer state, the schedule, the
step and the data position; the run starts at step 0 with a fresh AdamW.

`model.overrides` may change only what leaves the stored tensors meaningful: kernel choices, training
coefficients, the token ids, and mtp_depth (a module the source lacks starts from the seeded initialisation; a
module the source has and the run does not want is left out). An override that would change a shape is refused
naming the key.
"""

from __future__ import annotations

from pathlib import Path

import torch

from turnout.ckpt import read_manifest, resolve_checkpoint
from turnout.ckpt.restore import args_from_manifest, load_model
from turnout.config import Config, ConfigError
from turnout.data import Tokenizer
from turnout.errors import CheckpointError
from turnout.model.args import KERNEL_FIELDS, ModelArgs
from turnout.model.hf import load_pretrained, pretrained_args
from turnout.report.rundir import MANIFEST

# besides KERNEL_FIELDS: fields a fine-tuning run may set without touching the stored tensors
FREE_FIELDS = KERNEL_FIELDS + ("mtp_depth", "mtp_loss_weight", "aux_loss_alpha", "bias_update_speed", "init_std",
                               "ignore_index", "bos_token_id", "eos_token_id", "pad_token_id")


def is_hf_dir(path: Path) -> bool:
    return (path / "config.json").is_file() and not (path / MANIFEST).is_file()


def _source(config: Config) -> Path:
    path = Path(config.model.init).expanduser()
    if not path.exists():
        raise ConfigError(f"model.init: {path}: no such folder")
    return path


def source_args(path: Path) -> ModelArgs:
    """The ModelArgs of the model stored at `path` (HF directory, run or checkpoint folder)."""
    if is_hf_dir(path):
        return pretrained_args(path)
    folder = resolve_checkpoint(path)
    return args_from_manifest(read_manifest(folder), str(folder))


def init_args(config: Config) -> ModelArgs:
    """ModelArgs of a run started from `model.init`: the source's, with the overrides it allows."""
    path = _source(config)
    base = source_args(path)
    for key, value in config.model.overrides.items():
        if key not in FREE_FIELDS and getattr(base, key, object()) != value:
            raise ConfigError(f"model.overrides.{key}: {value!r} would change the shape of the model in "
                              f"model.init {path} (it has {getattr(base, key, None)!r}); starting from a trained "
                              "model, only kernel choices, training coefficients and mtp_depth may change")
    try:
        return base.replace(**config.model.overrides).check()
    except ValueError as e:
        raise ConfigError(f"model.overrides: {e}") from None


def load_init_weights(model: torch.nn.Module, config: Config) -> list[str]:
    """Copy the source's weights into `model` (built from init_args, not yet wrapped); returns the names of the
    MTP modules that start fresh (the source lacks them)."""
    path = _source(config)
    source = load_pretrained(path) if is_hf_dir(path) else load_model(path)[0]
    theirs = source.state_dict()
    ours = model.state_dict()
    depth = source.args.mtp_depth
    fresh = sorted({".".join(k.split(".")[:2]) for k in ours if k.startswith("mtp.") and int(k.split(".")[1]) >= depth})
    missing = [k for k in ours if k not in theirs and not any(k.startswith(f + ".") for f in fresh)]
    if missing:  # init_args allows no change that adds tensors other than MTP modules
        raise CheckpointError(f"model.init {path}: no tensor {missing[0]!r} for this model")
    for k, v in ours.items():
        if k in theirs:
            if theirs[k].shape != v.shape:
                raise CheckpointError(f"model.init {path}: {k} has shape {tuple(theirs[k].shape)}, this model "
                                      f"wants {tuple(v.shape)}")
            with torch.no_grad():
                v.copy_(theirs[k])
    return fresh


def init_tokenizer(config: Config) -> Tokenizer | None:
    """The tokenizer the run encodes its data with: `data.tokenizer`, else the one beside `model.init`'s weights;
    None when the run starts from scratch and trains its own."""
    if config.data.tokenizer:
        return Tokenizer.load(Path(config.data.tokenizer).expanduser())
    if not config.model.init:
        return None
    path = _source(config)
    folder = path if is_hf_dir(path) else resolve_checkpoint(path)
    if not (folder / "tokenizer.json").is_file():
        raise ConfigError(f"model.init {path}: no tokenizer.json beside the weights; give the model's tokenizer "
                          "with data.tokenizer (a pretrained embedding means nothing under another tokenizer)")
    return Tokenizer.load(folder)
