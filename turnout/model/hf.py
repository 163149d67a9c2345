"""Load and save HF DeepseekV3 checkpoint directories (config.json + safetensors, optionally sharded with an index).

`save_pretrained` writes what `transformers.DeepseekV3ForCausalLM.from_pretrained` loads without missing or
unexpected keys (apart from MTP layers, which HF only ignores at DeepSeek-V3's own layer index 61).
Released FP8 checkpoints (`weight` + `weight_scale_inv` per 128x128 block) are dequantised on load.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from turnout.errors import CheckpointError

from .args import ModelArgs
from .hf_keys import from_hf_state_dict, to_hf_state_dict
from .transformer import Transformer

INDEX = "model.safetensors.index.json"
log = logging.getLogger(__name__)


class SafetensorsReader:
    """Read-on-demand view of the tensors of a checkpoint directory: keys(), shape(key), [key].

    FP8 weights with a `<name>_scale_inv` sibling come out dequantised to fp32; the scale keys are hidden.
    """

    def __init__(self, path: Path, block: tuple[int, int] = (128, 128), exclude: tuple[str, ...] = ()):
        index = path / INDEX
        if index.exists():
            weight_map = json.loads(index.read_text())["weight_map"]
            files = sorted(set(weight_map.values()))
        else:
            files = sorted(p.name for p in path.glob("*.safetensors"))
        if not files:
            raise CheckpointError(f"no safetensors files in {path}")
        self.block, self.exclude = block, exclude
        self._where: dict[str, str] = {}
        self._handles = {}
        for f in files:
            if not (path / f).exists():
                raise CheckpointError(f"{f} named in {INDEX} is missing from {path}")
            h = self._handles[f] = safe_open(str(path / f), framework="pt", device="cpu")
            for k in h.keys():
                if k in self._where:
                    raise CheckpointError(f"tensor {k!r} appears in both {self._where[k]} and {f}")
                self._where[k] = f
        self._scales = {k[: -len("_scale_inv")] for k in self._where if k.endswith("_scale_inv")}

    def keys(self):
        return [k for k in self._where if not (k.endswith("_scale_inv") and k[: -len("_scale_inv")] in self._where)
                and not k.startswith(self.exclude)]

    def stored_dtypes(self) -> dict[str, int]:
        """Tensors per stored dtype, as safetensors names them ("BF16", "F8_E4M3", ...), scales included; no tensor
        is read."""
        out: dict[str, int] = {}
        for k, f in self._where.items():
            dt = self._handles[f].get_slice(k).get_dtype()
            out[dt] = out.get(dt, 0) + 1
        return out

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._handles[self._where[key]].get_slice(key).get_shape())

    def __getitem__(self, key: str) -> torch.Tensor:
        t = self._handles[self._where[key]].get_tensor(key)
        if key in self._scales:
            s = self._handles[self._where[key + "_scale_inv"]].get_tensor(key + "_scale_inv").float()
            bm, bn = self.block
            s = s.repeat_interleave(bm, 0)[: t.shape[0]].repeat_interleave(bn, 1)[:, : t.shape[1]]
            t = t.float() * s
        return t


def load_config(path: str | os.PathLike) -> ModelArgs:
    """ModelArgs from `path/config.json`."""
    cfg = Path(path) / "config.json"
    if not cfg.exists():
        raise CheckpointError(f"no config.json in {path}")
    try:
        return ModelArgs.from_hf_config_dict(json.loads(cfg.read_text())).check()
    except ValueError as e:
        raise CheckpointError(f"{cfg}: {e}") from None


def pretrained_args(path: str | os.PathLike) -> ModelArgs:
    """The ModelArgs `load_pretrained(path)` builds without overrides: config.json's, less the MTP modules the
    files hold no tensors for. Reads only config.json and the safetensors headers."""
    path = Path(path)
    args = load_config(path)
    raw = json.loads((path / "config.json").read_text())
    block = tuple((raw.get("quantization_config") or {}).get("weight_block_size") or (128, 128))
    return args.replace(mtp_depth=min(args.mtp_depth, mtp_depth_stored(SafetensorsReader(path, block).keys(), args)))


def load_pretrained(path: str | os.PathLike, device="cpu", dtype: torch.dtype = torch.float32,
                    **overrides) -> Transformer:
    """Build a Transformer from an HF DeepseekV3 directory; `overrides` change non-shape fields (e.g. experts_impl),
    or lower mtp_depth to leave MTP modules on disk.

    Every tensor the model needs must be present with its exact shape and nothing else may be left over
    (MTP copies of the embedding and head excepted); otherwise CheckpointError names the key. MTP modules that
    config.json declares but whose layers have no tensors at all (transformers' `save_pretrained` writes none)
    are left out, with one warning line on the `turnout.model.hf` logger; an explicit mtp_depth override is kept.
    """
    path = Path(path)
    on_disk = args = load_config(path)
    raw = json.loads((path / "config.json").read_text())
    block = tuple((raw.get("quantization_config") or {}).get("weight_block_size") or (128, 128))
    reader = SafetensorsReader(path, block)
    stored = mtp_depth_stored(reader.keys(), on_disk)
    if stored < on_disk.mtp_depth:
        on_disk = on_disk.replace(mtp_depth=stored)
        if "mtp_depth" not in overrides:
            log.warning("%s: config.json declares %d MTP layer(s) but the files hold %d; loading with mtp_depth %d",
                        path, args.mtp_depth, stored, stored)
            args = on_disk
    if overrides:
        args = args.replace(**overrides).check()
    reader.exclude = tuple(f"model.layers.{args.n_layers + k}." for k in range(args.mtp_depth, on_disk.mtp_depth))
    sd = from_hf_state_dict(reader, args)
    with torch.device("meta"):
        model = Transformer(args)
    model.to_empty(device=device)
    model.to(dtype)
    model.tie_weights()
    model.reset_expert_loads()
    model.load_state_dict(sd, strict=True)
    model.lay_out_weights()  # meta construction skipped it
    return model


def mtp_depth_stored(keys, args: ModelArgs) -> int:
    """How many of the MTP modules `args` declares have any tensor among `keys`, counting from the first: module k
    lives at HF layer `n_layers + k`; the first module without a single tensor ends the count."""
    prefixes = {k.split(".", 3)[2] for k in keys if k.startswith("model.layers.")}
    depth = 0
    while depth < args.mtp_depth and str(args.n_layers + depth) in prefixes:
        depth += 1
    return depth


def save_pretrained(model: Transformer, path: str | os.PathLike, max_shard_bytes: int = 5 * 2**30) -> None:
    """Write config.json and safetensors (sharded with an index above max_shard_bytes) atomically: into a
    temporary sibling directory that then replaces `path`."""
    path = Path(path)
    args = model.args
    sd = to_hf_state_dict(model.state_dict(), args)
    cfg = args.to_hf_config_dict()
    cfg["dtype"] = str(model.embed.weight.dtype).removeprefix("torch.")
    shards, size = [[]], 0
    for k, t in sd.items():
        n = t.numel() * t.element_size()
        if shards[-1] and size + n > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(k)
        size += n
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the result is an ordinary directory
    try:
        names = ["model.safetensors"] if len(shards) == 1 else [
            f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
        for name, keys in zip(names, shards):
            # clone: safetensors refuses tensors sharing storage (expert slices, tied or MTP-copied weights)
            save_file({k: sd[k].detach().cpu().contiguous().clone() for k in keys}, str(tmp / name),
                      metadata={"format": "pt"})
        if len(shards) > 1:
            total = sum(t.numel() * t.element_size() for t in sd.values())
            weight_map = {k: name for name, keys in zip(names, shards) for k in keys}
            (tmp / INDEX).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
        _replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _replace_dir(new: Path, path: Path):
    """Put directory `new` at `path`; an existing `path` is moved aside first and removed after."""
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path} exists and is not a directory")
    old = None
    if path.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
        os.rmdir(old)
        os.rename(path, old)
    os.rename(new, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
