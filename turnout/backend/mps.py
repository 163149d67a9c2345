"""Apple GPUs through torch.mps. Single device, no collective backend: runs are single-process."""

from __future__ import annotations

from turnout.backend import detect
from turnout.backend.interface import Backend
from turnout.config import Config


class MPSBackend(Backend):
    device_type = "mps"
    collective = "none"
    visible_devices_env = ""
    default_dtypes = ("fp32",)

    def availability(self) -> tuple[bool, str]:
        return detect.mps_present()

    def device_count(self) -> int:
        return 1 if self.is_available() else 0

    def device_name(self, index: int = 0) -> str:
        return "Apple GPU (mps)"

    def set_device(self, index: int) -> None:
        """MPS has one device."""

    def validate(self, config: Config, *, world_size: int = 1, param_count: int | None = None) -> list[str]:
        reasons = super().validate(config, world_size=1, param_count=param_count)
        if world_size > 1:
            reasons.append(f"world size {world_size}: mps has no collective backend; run one process")
        return reasons
