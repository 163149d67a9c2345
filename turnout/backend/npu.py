"""Huawei Ascend NPUs through torch_npu (a PrivateUse1 backend renamed to `npu`).

torch_npu is imported only through `detect.npu_present`, which survives a broken install. dtype support is
probed (the 910A has no bf16 even though flags may claim it); `hccl` here means Huawei's library.
"""

from __future__ import annotations

from turnout.backend import detect
from turnout.backend.interface import Backend


class NPUBackend(Backend):
    device_type = "npu"
    collective = "hccl"
    visible_devices_env = "ASCEND_RT_VISIBLE_DEVICES"
    default_dtypes = ("bf16", "fp32")

    def availability(self) -> tuple[bool, str]:
        return detect.npu_present()

    def software(self) -> dict[str, str]:
        """torch and torch_npu (whose release pins the CANN it runs on)."""
        import sys
        npu = sys.modules.get("torch_npu")
        return {**super().software(), "torch_npu": str(getattr(npu, "__version__", "?"))}
