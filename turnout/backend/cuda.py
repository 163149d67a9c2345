"""NVIDIA GPUs through torch.cuda. Code here may assume a CUDA build only after `availability()` says so."""

from __future__ import annotations

from turnout.backend import detect
from turnout.backend.interface import Backend


class CUDABackend(Backend):
    device_type = "cuda"
    collective = "nccl"
    visible_devices_env = "CUDA_VISIBLE_DEVICES"
    default_dtypes = ("bf16", "fp32")

    def availability(self) -> tuple[bool, str]:
        return detect.cuda_present()
