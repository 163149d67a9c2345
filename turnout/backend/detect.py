"""Guarded probes for which accelerators are present. Tests replace these functions to simulate hardware.

Order matters: npu is probed before cuda because `torch_npu.contrib.transfer_to_npu` rebinds `torch.cuda`
to the NPU module, so `torch.cuda.is_available()` would say yes on an Ascend machine.
"""

from __future__ import annotations

import importlib
import importlib.util

import torch

from turnout.errors import one_line


def _torch_has(device_type: str) -> bool:
    mod = getattr(torch, device_type, None)
    return mod is not None and hasattr(mod, "is_available")


def npu_present() -> tuple[bool, str]:
    """(present, reason). Importing torch_npu can itself fail inside CPU-only containers, so it is wrapped."""
    if importlib.util.find_spec("torch_npu") is None:
        return False, "torch_npu is not installed"
    try:
        importlib.import_module("torch_npu")
    except Exception as e:  # noqa: BLE001 - a broken vendor install must not break detection
        return False, f"importing torch_npu failed: {one_line(e)}"
    try:
        n = torch.npu.device_count()  # type: ignore[attr-defined]
    except Exception as e:  # noqa: BLE001
        return False, f"torch.npu.device_count() failed: {e}"
    return (n > 0, f"{n} NPU(s)" if n else "torch_npu imported but no NPU is visible")


def cuda_lies() -> bool:
    """True when torch.cuda has been rebound to another device module (transfer_to_npu)."""
    return not getattr(torch.cuda, "__name__", "torch.cuda").startswith("torch.cuda")


def cuda_present() -> tuple[bool, str]:
    if cuda_lies():
        return False, "torch.cuda is rebound to another device (transfer_to_npu); use npu"
    if not torch.backends.cuda.is_built():
        return False, "this torch build has no CUDA"
    try:
        n = torch.cuda.device_count()
    except Exception as e:  # noqa: BLE001
        return False, f"torch.cuda.device_count() failed: {e}"
    return (n > 0, f"{n} CUDA device(s)" if n else "no CUDA device visible")


def xpu_present() -> tuple[bool, str]:
    if not _torch_has("xpu"):
        return False, "this torch build has no XPU support"
    try:
        n = torch.xpu.device_count()
    except Exception as e:  # noqa: BLE001
        return False, f"torch.xpu.device_count() failed: {e}"
    return (n > 0, f"{n} XPU device(s)" if n else "no XPU device visible")


def mps_present() -> tuple[bool, str]:
    if not torch.backends.mps.is_built():
        return False, "this torch build has no MPS support"
    return (True, "Apple GPU") if torch.backends.mps.is_available() else (False, "MPS not available on this machine")


def current_accelerator() -> str | None:
    """torch.accelerator's view (torch >= 2.6), or None when there is none."""
    acc = getattr(torch, "accelerator", None)
    if acc is None:
        return None
    try:
        dev = acc.current_accelerator(check_available=True)
    except TypeError:  # older signature
        dev = acc.current_accelerator() if acc.is_available() else None
    except Exception:  # noqa: BLE001
        return None
    return None if dev is None else dev.type
