"""From a spec string to a Backend: parsing, the default choice, and the list of known targets."""

from __future__ import annotations

import os

from turnout.backend import detect
from turnout.backend.interface import Backend
from turnout.backend.spec import TargetError, TargetSpec, parse_spec

ENV_VAR = "TURNOUT_TARGET"
DEVICE_ORDER = ("npu", "cuda", "xpu", "mps")  # npu first: transfer_to_npu makes torch.cuda lie


def _backend_class(device: str) -> type[Backend]:
    if device == "cpu":
        from turnout.backend.cpu import CPUBackend as cls
    elif device == "cuda":
        from turnout.backend.cuda import CUDABackend as cls
    elif device == "npu":
        from turnout.backend.npu import NPUBackend as cls
    elif device == "xpu":
        from turnout.backend.xpu import XPUBackend as cls
    elif device == "mps":
        from turnout.backend.mps import MPSBackend as cls
    elif device == "sim":
        from turnout.backend.sim import SimBackend as cls
    else:  # parse_spec already refuses these
        raise TargetError(f"unknown device {device!r}")
    return cls


def get_backend(spec: str | TargetSpec | None = None) -> Backend:
    """The Backend for `spec` (a string or TargetSpec); None means `default_spec()`. Raises TargetError."""
    if spec is None:
        spec = default_spec()
    if isinstance(spec, str):
        spec = parse_spec(spec)
    return _backend_class(spec.device)(spec)


def default_spec() -> str:
    """$TURNOUT_TARGET if set, else the first present accelerator (npu, cuda, xpu, mps), else cpu."""
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        parse_spec(env)  # fail early and clearly on a bad override
        return env
    probes = {"npu": detect.npu_present, "cuda": detect.cuda_present, "xpu": detect.xpu_present,
              "mps": detect.mps_present}
    for device in DEVICE_ORDER:
        if probes[device]()[0]:
            return device
    acc = detect.current_accelerator()
    return acc if acc in DEVICE_ORDER else "cpu"


def shipped_profiles() -> list[str]:
    """Names of the sim profiles that ship with turnout."""
    from turnout.backend.sim_profile import shipped_names

    return shipped_names()


def known_targets() -> list[str]:
    """Every target `turnout targets` lists: each device kind, bf16 variants, and each shipped sim profile."""
    return ["cpu", "cpu:bf16", "cuda", "cuda:bf16", "npu", "npu:bf16", "xpu", "mps"] + [
        f"sim:{name}" for name in shipped_profiles()]
