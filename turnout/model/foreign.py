"""Any transformers causal LM behind the interface turnout's step runner and qualification drive.

`HFCausalLM` wraps a `transformers` model built by `AutoModelForCausalLM` (Llama, Qwen, Mixtral, DeepseekV3, ...)
so that what qualifies and trains turnout's own Transformer runs it unchanged: `model(tokens, targets=...)` returns
a `ModelOutput` (next-token cross-entropy on already shifted targets, no MTP, no balance loss), `layers` is the
model's repeated block list, found generically (the `nn.ModuleList` of identical modules holding the most
parameters), `new_cache` / `forward(cache=...)` run a prefill and decode steps on the model's own KV cache, and
`layer_group` names each parameter's group for per-layer gradient norms (embed, layers.i, norm, head, ...).

Kernel choices are the model's own (`attn_implementation`, `experts_implementation`, as transformers picks them
when it loads the model); they are part of what a qualification covers. Imports transformers only when a model
is loaded (`load_hf_causal_lm`), so turnout works without it.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from turnout.errors import CheckpointError

from .transformer import ModelOutput

_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """(path, list) of the decoder blocks: the ModuleList of one repeated module class with the most parameters."""
    best: tuple[int, str, nn.ModuleList] | None = None
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.ModuleList) or not len(mod) or len({type(m) for m in mod}) != 1:
            continue
        n = sum(p.numel() for p in mod.parameters())
        if best is None or n > best[0]:
            best = (n, name, mod)
    if best is None:
        raise CheckpointError(f"{type(model).__name__} has no repeated block list (nn.ModuleList) to qualify")
    return best[1], best[2]


class HFCausalLM(nn.Module):
    """A transformers causal LM (its module is `self.hf`) with the training interface of turnout's Transformer."""

    def __init__(self, hf_model: nn.Module):
        super().__init__()
        self.hf = hf_model
        path, blocks = find_blocks(hf_model)
        self.block_path = f"hf.{path}"
        object.__setattr__(self, "_blocks", blocks)  # a view, not a second registration of the same modules
        object.__setattr__(self, "_mtp", nn.ModuleList())
        ids: dict[int, str] = {}
        emb, out = hf_model.get_input_embeddings(), hf_model.get_output_embeddings()
        for group, mod in (("embed", emb), ("head", out)):
            for p in (mod.parameters() if mod is not None else ()):
                ids.setdefault(id(p), group)  # a tied head is the embedding's parameter: counted once, as embed
        # by name, so that a copy of this module (deepcopy, .double()) keeps its groups
        self._group_of_param = {n: ids[id(p)] for n, p in self.named_parameters() if id(p) in ids}
        # transformers >= 5.2x names the KV cache argument `cache` and deprecates `past_key_values`
        self._cache_kwarg = "cache" if "cache" in inspect.signature(hf_model.forward).parameters else "past_key_values"

    @property
    def layers(self) -> nn.ModuleList:
        """The decoder blocks, in order (layers.i)."""
        return self._blocks

    @property
    def mtp(self) -> nn.ModuleList:
        """No multi-token-prediction modules: empty."""
        return self._mtp

    @property
    def architecture(self) -> str:
        """The transformers class name, e.g. 'LlamaForCausalLM'."""
        archs = getattr(self.hf.config, "architectures", None) or [type(self.hf).__name__]
        return archs[0]

    @property
    def kernels(self) -> dict[str, str]:
        """The kernel choices the model runs with: attention and (for MoE models) experts implementation."""
        c = self.hf.config
        out = {"attn_implementation": str(getattr(c, "_attn_implementation", None) or "eager")}
        if any(hasattr(m, "_apply_gate") for m in self.hf.modules()):  # transformers' pluggable experts
            out["experts_implementation"] = str(getattr(c, "_experts_implementation", None) or "eager")
        return out

    def layer_group(self, name: str) -> str:
        """The gradient-norm group of parameter `name` (as named_parameters of this module names it)."""
        m = re.match(re.escape(self.block_path) + r"\.(\d+)\.", name)
        if m:
            return f"layers.{m.group(1)}"
        if name in self._group_of_param:
            return self._group_of_param[name]
        parts = name.removeprefix("hf.").split(".")[:-1]  # the module path, without the parameter's own name
        parts = parts[1:] if len(parts) > 1 and parts[0] == getattr(self.hf, "base_model_prefix", "") else parts
        return ".".join(parts) or name

    def new_cache(self, batch: int, max_seq: int, dtype: torch.dtype = torch.float32):
        """An empty KV cache of the model's own kind (transformers' DynamicCache); grows as it is used."""
        from transformers import DynamicCache
        return DynamicCache(config=self.hf.config)

    def forward(self, tokens: torch.Tensor, targets: torch.Tensor | None = None, *, cache=None,
                start_pos: int = 0, return_logits: bool = False) -> ModelOutput | torch.Tensor:
        """Training (targets given): ModelOutput with the mean cross-entropy over targets != -100 (targets are
        already shifted: targets[:, t] follows tokens[:, t]). Inference: logits [B, T, vocab]; with a cache from
        `new_cache`, the tokens continue at position `start_pos`."""
        if targets is None:
            kw = {self._cache_kwarg: cache, "use_cache": True} if cache is not None else {"use_cache": False}
            if cache is not None:
                kw["position_ids"] = torch.arange(start_pos, start_pos + tokens.shape[1],
                                                  device=tokens.device).expand(tokens.shape[0], -1)
            return self.hf(input_ids=tokens, **kw).logits
        logits = self.hf(input_ids=tokens, use_cache=False).logits
        ce = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100)
        zero = ce.new_zeros(())
        return ModelOutput(loss=ce, ce=ce, mtp=zero, balance=zero, logits=logits if return_logits else None)

    def moe_layers(self) -> list:
        """turnout's MoE layers with aux-loss-free router biases: none (a transformers model's routers are its own)."""
        return []

    def reset_expert_loads(self) -> None:
        """No aux-loss-free router biases to count for: nothing to reset."""

    def update_expert_bias(self, gamma: float | None = None, group=None) -> torch.Tensor:
        """No router biases to move: an empty [0, 0] load table."""
        return torch.zeros(0, 0)


def read_hf_config(folder: str | Path) -> dict:
    """config.json of a transformers model folder, as a dict; a missing or unreadable file raises CheckpointError."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{folder}: no config.json (not a transformers model folder)")
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable ({e})") from None
    if not isinstance(raw, dict) or "model_type" not in raw:
        raise CheckpointError(f"{path}: key 'model_type' missing (not a transformers config)")
    return raw


def has_weights(folder: str | Path) -> bool:
    """Whether the folder holds safetensors weights (else a model is built from its config, randomly initialised)."""
    return any((Path(folder) / f).is_file() for f in _WEIGHTS)


@contextlib.contextmanager
def _quiet_transformers():
    from transformers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(level)


def load_hf_causal_lm(folder: str | Path, seed: int = 0) -> HFCausalLM:
    """The transformers model in `folder` (fp32): its weights when the folder has them, else randomly initialised
    from config.json under `seed` (identical on every call). Unknown architectures, FP8 release weights and weights
    that do not fit the config raise CheckpointError naming the file."""
    folder = Path(folder)
    raw = read_hf_config(folder)
    try:
        from transformers import AutoConfig, AutoModelForCausalLM
    except ImportError:
        raise CheckpointError("loading a transformers model needs transformers: pip install 'turnout[transformers]'"
                              ) from None
    if raw.get("quantization_config"):
        q = raw["quantization_config"].get("quant_method", "?")
        raise CheckpointError(f"{folder / 'config.json'}: quantization_config ({q}) weights are not loaded as a "
                              f"transformers model here; for a DeepseekV3 release use model.init = {folder}")
    try:
        config = AutoConfig.from_pretrained(folder)
    except (ValueError, KeyError, OSError) as e:
        raise CheckpointError(f"{folder / 'config.json'}: model_type '{raw['model_type']}' is not one transformers "
                              f"builds ({str(e).splitlines()[0][:160]})") from None
    torch.manual_seed(seed)
    try:
        if has_weights(folder):
            with _quiet_transformers():  # its load report is a table on stderr; what matters is raised below
                model, info = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32,
                                                                   output_loading_info=True,
                                                                   ignore_mismatched_sizes=True)
            bad = [("missing tensor", k) for k in info.get("missing_keys", ())] + \
                [("mis-shaped tensor", k[0] if isinstance(k, tuple) else k) for k in info.get("mismatched_keys", ())]
            if bad:
                raise CheckpointError(f"{folder}: {bad[0][0]} '{bad[0][1]}'"
                                      + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""))
        else:
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    except ValueError as e:  # an architecture with no causal-LM head, or weights of the wrong shape
        raise CheckpointError(f"{folder}: {str(e).splitlines()[0][:200]}") from None
    except (OSError, RuntimeError) as e:
        raise CheckpointError(f"{folder}: weights do not load ({str(e).splitlines()[0][:200]})") from None
    model.eval()
    return HFCausalLM(model)
