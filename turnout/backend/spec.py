"""Target specs: where and how compute runs, written `DEVICE[:DTYPE]` or `sim:PROFILE[:DTYPE]`."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from turnout.errors import TargetError

DEVICES = ("cpu", "cuda", "npu", "xpu", "mps", "sim")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def dtype_name(dtype: torch.dtype) -> str:
    """A compute dtype's short name (fp32, bf16, fp16), as specs, configs and fingerprints write it; torch's own
    name for any other dtype."""
    return next((n for n, d in DTYPES.items() if d == dtype), str(dtype))


VALID_FORMS = ("cpu", "cpu:fp32", "cpu:bf16", "cuda", "cuda:bf16", "npu:bf16", "xpu", "mps",
               "sim:<profile name or path/to/profile.toml>[:dtype]")


@dataclass(frozen=True)
class TargetSpec:
    """A parsed target: device kind, optional pinned dtype name, and the sim profile (name or path)."""

    device: str
    dtype: str | None = None
    profile: str | None = None

    def __str__(self) -> str:
        head = f"sim:{self.profile}" if self.device == "sim" else self.device
        return f"{head}:{self.dtype}" if self.dtype else head

    @property
    def torch_dtype(self) -> torch.dtype | None:
        return DTYPES[self.dtype] if self.dtype else None


def _forms() -> str:
    return "valid forms: " + ", ".join(VALID_FORMS) + f" (dtypes: {', '.join(DTYPES)})"


def parse_spec(text: str) -> TargetSpec:
    """Parse a target spec string; raise TargetError naming the problem and the valid forms."""
    if not isinstance(text, str) or not text.strip():
        raise TargetError(f"empty target spec; {_forms()}")
    s = text.strip()
    device, sep, rest = s.partition(":")
    device = device.lower()
    if device not in DEVICES:
        raise TargetError(f"unknown target {s!r}: device {device!r} is not one of {', '.join(DEVICES)}; {_forms()}")
    if device == "sim":
        if not rest:
            raise TargetError(f"target {s!r} names no profile; {_forms()}")
        if rest.endswith(":"):  # 'sim:flaky:' would otherwise look for a profile named 'flaky:'
            raise TargetError(f"target {s!r} ends in ':' with no dtype after it; {_forms()}")
        profile, dtype = rest, None
        head, sep, tail = rest.rpartition(":")
        if sep and tail.lower() in DTYPES:
            profile, dtype = head, tail.lower()
        if not profile:
            raise TargetError(f"target {s!r} names no profile; {_forms()}")
        return TargetSpec("sim", dtype, profile)
    if not sep:
        return TargetSpec(device)
    if not rest:  # 'cpu:' is a dtype left out, not the default dtype
        raise TargetError(f"target {s!r} ends in ':' with no dtype after it; {_forms()}")
    if ":" in rest or rest.lower() not in DTYPES:
        raise TargetError(f"bad dtype in target {s!r}: {rest!r} is not one of {', '.join(DTYPES)}; {_forms()}")
    return TargetSpec(device, rest.lower())


def canonical_spec(text: str) -> str:
    """The one written form of a spec (' CPU:BF16' -> 'cpu:bf16'), for comparing specs written differently;
    raises TargetError as parse_spec does."""
    return str(parse_spec(text))
