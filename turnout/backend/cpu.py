"""The host CPU. Always available; the reference for conformance and the last fallback.

Assumes nothing beyond a torch CPU build: fp32 by default (CPUs without bf16 units run bf16 matmuls
hundreds of times slower, which qualification reports as a perf cliff), gloo for collectives.
"""

from __future__ import annotations

import os
import platform

import torch

from turnout.backend.interface import Backend


class CPUBackend(Backend):
    device_type = "cpu"
    collective = "gloo"
    visible_devices_env = ""
    default_dtypes = ("fp32",)

    def availability(self) -> tuple[bool, str]:
        return True, f"{os.cpu_count()} core(s), {torch.get_num_threads()} torch thread(s)"

    def device_count(self) -> int:
        return 1

    def device(self, index: int = 0) -> torch.device:
        return torch.device("cpu")

    def software(self) -> dict[str, str]:
        """torch, and the vector ISA its CPU kernels dispatch to (AVX2 and AVX-512 round sums differently)."""
        return {**super().software(), "cpu_capability": torch.backends.cpu.get_cpu_capability()}

    def device_name(self, index: int = 0) -> str:
        """The CPU model (/proc/cpuinfo's model name where there is one)."""
        try:
            with open("/proc/cpuinfo") as f:
                for line in f:
                    if line.startswith("model name"):
                        return line.split(":", 1)[1].strip()
        except OSError:
            pass
        return platform.processor() or platform.machine() or "cpu"

    def set_device(self, index: int) -> None:
        """A CPU rank has no device to select."""

    def inference_kernels(self) -> dict[str, str]:
        """Input-major weights: BLAS reads them faster for one-row matmuls; a loop over the experts that got
        tokens: torch's CPU grouped matmul visits every expert, most of them empty at decode.
        (bench/decode_vs_hf.py --breakdown measures the difference.)"""
        return {"weight_layout": "in_out", "experts_impl": "loop"}

    def memory_stats(self) -> dict[str, int]:
        """Resident memory of this process (allocated, peak) and physical memory (total), from /proc."""
        stats = {"allocated": 0, "peak_allocated": 0, "total": 0}
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        stats["allocated"] = int(line.split()[1]) * 1024
                    elif line.startswith("VmHWM:"):
                        stats["peak_allocated"] = int(line.split()[1]) * 1024
            stats["total"] = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (OSError, ValueError):
            pass
        return stats
