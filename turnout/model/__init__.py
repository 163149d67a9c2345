"""DeepSeek-V3 architecture in plain PyTorch: MLA, DeepSeekMoE with aux-loss-free balancing, MTP, HF interop.

Imports only torch, the standard library, safetensors and turnout.errors (nothing from turnout.backend or later);
CheckpointError, which loading raises, lives in turnout.errors.
"""

from .args import PRESETS, ModelArgs
from .cache import CacheStep, LatentCache
from .flops import flops_per_token, mtp_params, param_counts
from .hf import load_config, load_pretrained, save_pretrained
from .hf_keys import from_hf_state_dict, hf_key, to_hf_state_dict
from .transformer import ModelOutput, Transformer

__all__ = [
    "PRESETS", "ModelArgs", "Transformer", "ModelOutput", "LatentCache", "CacheStep",
    "param_counts", "mtp_params", "flops_per_token",
    "load_pretrained", "save_pretrained", "load_config",
    "to_hf_state_dict", "from_hf_state_dict", "hf_key",
]
