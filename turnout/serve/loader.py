"""Put a model and its tokenizer on a target: a turnout run/checkpoint folder, or an HF DeepseekV3 directory.

    run or checkpoint folder  manifest.json + DCP shards + tokenizer.json; the manifest names the target it was
                              trained on and is verified (sha256 of every file) before loading
    HF directory              config.json + *.safetensors (+ index) + tokenizer.json; no record of a training target

`model_identity` hashes the weights without loading them (what a parity certificate binds to): for a checkpoint,
the sha256 of its manifest's model args and per-file digests (which `verify` has just checked against the files);
for an HF directory, the sha256 of config.json, every safetensors file, the index and tokenizer.json.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from turnout.backend import Backend, TargetError, canonical_spec, get_backend
from turnout.ckpt import read_manifest, resolve_checkpoint
from turnout.ckpt.manifest import sha256_file
from turnout.ckpt.restore import load_model
from turnout.data import Tokenizer
from turnout.errors import CheckpointError
from turnout.model import Transformer, load_pretrained
from turnout.model.hf import INDEX
from turnout.report.rundir import RunDir
from turnout.train.init import is_hf_dir


@dataclass(frozen=True)
class ModelIdentity:
    """Which weights a path holds, and where they came from (no tensors loaded)."""

    kind: str  # "checkpoint" | "hf"
    folder: Path  # the checkpoint folder or the HF directory
    sha256: str
    trained_on: str | None  # the manifest's target; None for an HF directory
    name: str  # the id the API serves it under
    path: Path  # what the user named: a run folder, a checkpoint folder or an HF directory

    @property
    def certificate_dir(self) -> Path:
        """Where `turnout parity` writes certificates: the named folder, except beside a checkpoint folder named
        directly (a file inside it would fail its manifest check)."""
        return self.folder.parent if self.path.resolve() == self.folder.resolve() and self.kind == "checkpoint" \
            else self.path

    @property
    def certificate_dirs(self) -> list[Path]:
        """Where certificates are looked for: certificate_dir, and for a checkpoint its run folder and the
        folder holding it."""
        dirs = [self.certificate_dir]
        if self.kind == "checkpoint":
            run = RunDir.of_checkpoint(self.folder)
            dirs += [self.folder.parent, run.root] if run else [self.folder.parent]
        out = []
        for d in dirs:
            if d.resolve() not in [o.resolve() for o in out]:
                out.append(d)
        return out

    def with_trained_on(self, trained_on: str | None) -> ModelIdentity:
        return dataclasses.replace(self, trained_on=trained_on)


@dataclass
class LoadedModel:
    """A model in eval mode on a target, with its tokenizer and identity."""

    model: Transformer
    tokenizer: Tokenizer
    backend: Backend
    dtype: torch.dtype
    identity: ModelIdentity

    @property
    def name(self) -> str:
        return self.identity.name


def model_identity(path: str | Path) -> ModelIdentity:
    """Kind, folder, sha256 and trained-on target of the weights at `path`; CheckpointError when unusable."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such model folder")
    if is_hf_dir(path):
        files = sorted(p for p in path.iterdir() if p.is_file() and (
            p.suffix == ".safetensors" or p.name in ("config.json", INDEX, "tokenizer.json")))
        if not any(p.suffix == ".safetensors" for p in files):
            raise CheckpointError(f"{path}: config.json but no safetensors files")
        h = hashlib.sha256(b"turnout-hf-weights/1\n")
        for p in files:
            h.update(f"{p.name}:{sha256_file(p)}\n".encode())
        return ModelIdentity("hf", path, h.hexdigest(), None, path.resolve().name, path)
    folder = resolve_checkpoint(path)  # verifies every file against the manifest
    m = read_manifest(folder)
    body = json.dumps({"model_args": m.model_args, "files": m.files}, sort_keys=True)
    sha = hashlib.sha256(b"turnout-checkpoint-weights/1\n" + body.encode()).hexdigest()
    run = RunDir.of_checkpoint(folder)
    name = (run.root if run else folder).resolve().name
    return ModelIdentity("checkpoint", folder, sha, m.target, f"{name}/{folder.name}", path)


def get_available_backend(target: str | None) -> Backend:
    """The backend for `target` (None: the default), refusing one that is not present here."""
    backend = get_backend(target)
    ok, why = backend.availability()
    if not ok:
        raise TargetError(f"target {backend.name} is not available: {why}")
    return backend


def load_for_serving(path: str | Path, target: str | None = None, *, trained_on: str | None = None,
                     dtype: torch.dtype | None = None) -> LoadedModel:
    """Load the weights at `path` onto `target` in its compute dtype (or `dtype`), with the tokenizer beside them.

    `trained_on` supplies the training target for an HF directory (a checkpoint's manifest already says it; a
    different value is refused).
    """
    backend = get_available_backend(target)
    identity = model_identity(path)
    if trained_on is not None:
        trained_on = canonical_spec(trained_on)
        if identity.trained_on is not None and canonical_spec(identity.trained_on) != trained_on:
            raise CheckpointError(f"{identity.folder}: the manifest says it was trained on {identity.trained_on}, "
                                  f"not {trained_on}")
        identity = identity.with_trained_on(trained_on)
    dtype = dtype or backend.compute_dtype()
    device = backend.device()
    tok_path = identity.folder / "tokenizer.json"
    if not tok_path.is_file():
        raise CheckpointError(f"{identity.folder}: no tokenizer.json beside the weights")
    tokenizer = Tokenizer.load(tok_path)
    if identity.kind == "hf":
        model = load_pretrained(identity.folder, device=device, dtype=dtype)
    else:
        model, _, _ = load_model(identity.folder, device=device, dtype=dtype)
    if tokenizer.vocab_size > model.args.vocab_size:
        raise CheckpointError(f"{tok_path}: {tokenizer.vocab_size} tokens exceed the model's vocab_size "
                              f"{model.args.vocab_size}")
    return LoadedModel(model.eval(), tokenizer, backend, dtype, identity)
