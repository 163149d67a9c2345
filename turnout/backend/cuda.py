"""NVIDIA GPUs through torch.cuda. Code here may assume a CUDA build only after `availability()` says so."""

from __future__ import annotations

import subprocess

import torch

from turnout.backend import detect
from turnout.backend.interface import Backend


class CUDABackend(Backend):
    device_type = "cuda"
    collective = "nccl"
    visible_devices_env = "CUDA_VISIBLE_DEVICES"
    default_dtypes = ("bf16", "fp32")

    def availability(self) -> tuple[bool, str]:
        return detect.cuda_present()

    def software(self) -> dict[str, str]:
        """torch, its CUDA and cuDNN, and the driver (from nvidia-smi, when it answers within 5 s)."""
        out = {**super().software(), "cuda": str(torch.version.cuda)}
        if torch.backends.cudnn.is_available():
            out["cudnn"] = str(torch.backends.cudnn.version())
        try:
            smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=5)
            if smi.returncode == 0 and smi.stdout.strip():
                out["driver"] = smi.stdout.split()[0]
        except (OSError, subprocess.SubprocessError):
            pass
        return out
