"""The accelerator seam: one `Backend` object per target, the only place that knows what a device can do.

Subclasses (one file per device kind) fill in availability, the collective backend, the visible-devices
variable and device-module access; capabilities (dtypes, matmul peak) are *probed*, never read from flags.
A backend may refuse a config with reasons (`validate`), but never edits it.
"""

from __future__ import annotations

import contextlib
import time
from abc import ABC, abstractmethod
from typing import Any

import torch

from turnout.backend import checksums
from turnout.backend.spec import DTYPES, TargetSpec
from turnout.config import Config
from turnout.errors import one_line


class Backend(ABC):
    """Where compute runs. Built from a TargetSpec by `turnout.backend.get_backend`."""

    #: device kind as torch names it ("cpu", "cuda", "npu", "xpu", "mps")
    device_type: str = "cpu"
    #: torch.distributed process-group backend for this device
    collective: str = "gloo"
    #: environment variable that selects visible devices ("" when none)
    visible_devices_env: str = ""
    #: dtype used when neither spec nor config pins one, in order of preference among probed dtypes
    default_dtypes: tuple[str, ...] = ("fp32",)

    def __init__(self, spec: TargetSpec):
        self.spec = spec
        self._dtypes: dict[str, str | None] | None = None
        self._peaks: dict[str, float] = {}
        self._checksums: tuple[str | None] | None = None

    # ---- identity and presence -------------------------------------------------------------------
    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.spec}>"

    @property
    def name(self) -> str:
        """The spec string, e.g. 'cuda:bf16' or 'sim:flaky'."""
        return str(self.spec)

    @abstractmethod
    def availability(self) -> tuple[bool, str]:
        """(available, reason); the reason says why not, or what was found."""

    def is_available(self) -> bool:
        return self.availability()[0]

    def device_count(self) -> int:
        return self.module().device_count() if self.is_available() else 0

    def device(self, index: int = 0) -> torch.device:
        """The torch.device for local device `index`."""
        return torch.device(self.device_type, index)

    def device_name(self, index: int = 0) -> str:
        """Human-readable device model name."""
        try:
            return str(self.module().get_device_name(index))
        except Exception:  # noqa: BLE001 - some device modules have no name query
            return self.device_type

    def module(self) -> Any:
        """The torch device module (torch.cuda, torch.npu, ...)."""
        return torch.get_device_module(self.device_type)

    def set_device(self, index: int) -> None:
        self.module().set_device(index)

    # ---- dtypes ----------------------------------------------------------------------------------
    def probe_dtypes(self) -> dict[str, str | None]:
        """Run a tiny matmul + softmax + backward in each dtype; map dtype name -> None if it works, else the error."""
        if self._dtypes is None:
            self._dtypes = {}
            for name, dt in DTYPES.items():
                self._dtypes[name] = self._probe_one(dt) if self.is_available() else "target not available"
        return self._dtypes

    def _probe_one(self, dtype: torch.dtype) -> str | None:
        try:
            with self.compute():
                a = torch.randn(16, 16, device=self.device(), dtype=torch.float32).to(dtype).requires_grad_()
                b = torch.randn(16, 16, device=self.device(), dtype=torch.float32).to(dtype)
                y = torch.softmax(a @ b, dim=-1).sum()
                y.backward()
                ok = bool(torch.isfinite(a.grad.float()).all().item())
            self.synchronize()
            return None if ok else "non-finite result"
        except Exception as e:  # noqa: BLE001 - any failure means the dtype does not run here
            return one_line(e, limit=200)

    def dtypes(self) -> list[str]:
        """Names of dtypes that really ran here."""
        return [n for n, err in self.probe_dtypes().items() if err is None]

    def compute_dtype_name(self, config: Config | None = None) -> str:
        """The dtype a run uses: the spec's, else the config's, else the first working default."""
        if self.spec.dtype:
            return self.spec.dtype
        if config is not None and config.train.dtype != "auto":
            return config.train.dtype
        works = self.dtypes()
        for name in self.default_dtypes:
            if name in works:
                return name
        return "fp32"

    def compute_dtype(self, config: Config | None = None) -> torch.dtype:
        return DTYPES[self.compute_dtype_name(config)]

    # ---- execution -------------------------------------------------------------------------------
    def compute(self) -> contextlib.AbstractContextManager:
        """Context under which all model compute on this target runs (real devices: nothing to do)."""
        return contextlib.nullcontext()

    def autocast(self, dtype: torch.dtype) -> contextlib.AbstractContextManager:
        """Mixed precision for `dtype` (fp32 means none): master weights stay fp32."""
        if dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=dtype)

    def inference_kernels(self) -> dict[str, str]:
        """Model kernel choices (ModelArgs fields, see model.KERNEL_FIELDS) that serve few-token decode steps best
        here; the serving engine applies them with `Transformer.set_kernels`. Default: the training choices."""
        return {}

    def set_step(self, step: int) -> None:
        """Tell the target which training step runs now (the emulated accelerator schedules faults by it)."""

    def synchronize(self) -> None:
        if self.device_type != "cpu" and self.is_available():
            self.module().synchronize()

    # ---- RNG (needed to move a run between targets) ------------------------------------------------
    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)
        if self.device_type != "cpu" and self.is_available():
            self.module().manual_seed_all(seed)

    def get_rng_state(self) -> dict[str, torch.Tensor]:
        """RNG state as uint8 CPU tensors: 'cpu' always, 'device' where the device has its own generator."""
        state = {"cpu": torch.get_rng_state()}
        if self.device_type != "cpu" and self.is_available():
            state["device"] = self.module().get_rng_state().cpu()
        return state

    def set_rng_state(self, state: dict[str, torch.Tensor]) -> None:
        """Restore what get_rng_state returned; a device state from another device kind is ignored (seed instead)."""
        torch.set_rng_state(state["cpu"].cpu().to(torch.uint8))
        if "device" in state and self.device_type != "cpu" and self.is_available():
            try:
                self.module().set_rng_state(state["device"].cpu().to(torch.uint8))
            except (RuntimeError, ValueError):
                self.module().manual_seed_all(int(state["cpu"][:8].view(torch.int64).item()) & 0x7FFFFFFF)

    # ---- memory ------------------------------------------------------------------------------------
    def memory_stats(self) -> dict[str, int]:
        """Bytes: allocated, peak_allocated and total (0 where unknown)."""
        acc = torch.accelerator if hasattr(torch, "accelerator") else None
        try:
            m = self.module()
            total = 0
            with contextlib.suppress(Exception):
                total = int(m.get_device_properties(0).total_memory)
            return {"allocated": int(m.memory_allocated()), "peak_allocated": int(m.max_memory_allocated()),
                    "total": total}
        except Exception:  # noqa: BLE001
            if acc is not None:
                with contextlib.suppress(Exception):
                    return {"allocated": int(acc.memory_allocated()), "peak_allocated": int(acc.max_memory_allocated()),
                            "total": 0}
            return {"allocated": 0, "peak_allocated": 0, "total": 0}

    # ---- performance ---------------------------------------------------------------------------------
    def matmul_peak(self, dtype: str | None = None, max_size: int = 2048, repeats: int = 5) -> float:
        """Measured dense matmul throughput in FLOP/s (best of `repeats`), cached per dtype for this process.

        The size grows from 256 until one matmul takes ~0.1 s or reaches `max_size`, so a dtype that runs far
        below peak (a perf cliff, e.g. bf16 on a CPU without bf16 units) is measured in seconds, not minutes.
        """
        dtype = dtype or self.compute_dtype_name()
        if dtype not in self._peaks:
            self._peaks[dtype] = self._measure_matmul(DTYPES[dtype], max_size, repeats)
        return self._peaks[dtype]

    def _time_matmul(self, a: torch.Tensor, b: torch.Tensor) -> float:
        self.synchronize()
        t0 = time.perf_counter()
        a @ b
        self.synchronize()
        return time.perf_counter() - t0

    def _measure_matmul(self, dtype: torch.dtype, max_size: int, repeats: int) -> float:
        with self.compute():
            size = 256
            while True:
                a = torch.randn(size, size, device=self.device()).to(dtype)
                b = torch.randn(size, size, device=self.device()).to(dtype)
                self._time_matmul(a, b)  # warm up kernels and caches at this size
                if size >= max_size or self._time_matmul(a, b) > 0.1:
                    break
                size *= 2
            best = min(self._time_matmul(a, b) for _ in range(repeats))
        return 2 * size**3 / best  # the best run: a peak, not a typical time on a busy machine

    def checksum_refusal(self) -> str | None:
        """Why this target cannot verify matrix products by checksums (turnout.backend.checksums), or None;
        probed once: the checks' own ops and a small checked matmul run here."""
        if self._checksums is None:
            self._checksums = (checksums.probe(self.compute(), self.device()),)
        return self._checksums[0]

    # ---- refusal -------------------------------------------------------------------------------------
    def validate(self, config: Config, *, world_size: int = 1, param_count: int | None = None) -> list[str]:
        """Reasons this target cannot run `config` (empty when it can). Never edits the config.

        `param_count` feeds the memory check; the backend layer cannot count a model's parameters, so callers go
        through turnout.train.build.refusals, which does."""
        reasons = []
        ok, why = self.availability()
        if not ok:
            return [f"target {self.name} is not available: {why}"]
        if self.spec.dtype and config.train.dtype not in ("auto", self.spec.dtype):
            reasons.append(f"train.dtype={config.train.dtype} conflicts with target {self.name}, which pins "
                           f"{self.spec.dtype}")
        want = self.compute_dtype_name(config)
        err = self.probe_dtypes().get(want)
        if err is not None:
            reasons.append(f"train.dtype={want}: {self.name} cannot run {want} ({err})")
        if config.health.enabled and config.health.checksums:
            err = self.checksum_refusal()
            if err is not None:
                reasons.append(f"health.checksums=true: {self.name} cannot run the product checksums ({err}); "
                               f"set health.checksums=false to train without them")
        if want == "fp16":
            reasons.append("train.dtype=fp16: training in fp16 needs loss scaling, which turnout does not do; "
                           "use bf16 or fp32")
        if world_size > max(self.device_count(), 1) and self.device_type != "cpu":
            reasons.append(f"world size {world_size} exceeds the {self.device_count()} visible {self.device_type} "
                           f"device(s)")
        if param_count is not None:
            need = param_count * 16  # fp32 weights + grads + two AdamW moments
            total = self.memory_stats().get("total", 0)
            if total and need / max(world_size, 1) > total:
                reasons.append(f"model.preset={config.model.preset}: ~{need / 2**30:.0f} GiB of weights, gradients "
                               f"and optimizer state per replica exceed the {total / 2**30:.0f} GiB of "
                               f"{self.device_name()}")
        return reasons

    # ---- description ---------------------------------------------------------------------------------
    def software(self) -> dict[str, str]:
        """The versions that decide this target's numerics beyond the model: torch, and per device kind its
        runtime and driver (a subclass adds them)."""
        return {"torch": torch.__version__}

    def describe(self, peak: bool = False) -> dict[str, Any]:
        """A JSON-ready summary for `turnout targets`."""
        ok, why = self.availability()
        info: dict[str, Any] = {"spec": self.name, "device": self.device_type, "available": ok, "detail": why,
                                "count": self.device_count() if ok else 0,
                                "dtypes": self.dtypes() if ok else [],
                                "collective": self.collective, "visible_devices_env": self.visible_devices_env}
        if ok:
            info["name"] = self.device_name()
            info["compute_dtype"] = self.compute_dtype_name()
        if peak and ok:
            info["peak_flops"] = {d: self.matmul_peak(d) for d in info["dtypes"]}
        return info

