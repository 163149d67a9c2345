"""Intel GPUs through torch.xpu (upstream in torch >= 2.4)."""

from __future__ import annotations

from turnout.backend import detect
from turnout.backend.interface import Backend


class XPUBackend(Backend):
    device_type = "xpu"
    collective = "xccl"
    visible_devices_env = "ZE_AFFINITY_MASK"
    default_dtypes = ("bf16", "fp32")

    def availability(self) -> tuple[bool, str]:
        return detect.xpu_present()
