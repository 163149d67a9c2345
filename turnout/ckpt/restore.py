"""Rebuild a model from a checkpoint alone (its manifest holds the model args), on any device."""

from __future__ import annotations

from pathlib import Path

import torch

from turnout.ckpt.manifest import Manifest, read_manifest
from turnout.ckpt.store import load_state, resolve_checkpoint
from turnout.errors import CheckpointError
from turnout.model.args import ModelArgs
from turnout.model.transformer import Transformer


def args_from_manifest(m: Manifest, where: str) -> ModelArgs:
    try:
        return ModelArgs().replace(**m.model_args).check()
    except ValueError as e:
        raise CheckpointError(f"{where}: model args in the manifest are not usable ({e})") from None


def load_model(path: str | Path, device: str | torch.device = "cpu",
               dtype: torch.dtype = torch.float32) -> tuple[Transformer, Manifest, Path]:
    """(model in eval mode, manifest, checkpoint folder) from a run folder (newest good checkpoint) or a checkpoint
    folder. Weights load through DCP, so checkpoints written by any number of ranks work."""
    folder = resolve_checkpoint(Path(path))
    m = read_manifest(folder)
    args = args_from_manifest(m, str(folder))
    model = Transformer(args).to(device)  # random init is overwritten: DCP checks every key is present
    load_state(folder, model, None)
    return model.to(dtype).eval(), m, folder
