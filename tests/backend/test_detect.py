"""Detection with simulated presence and absence of accelerators."""

import sys
import types

import pytest

from turnout.backend import default_spec, get_backend
from turnout.backend import detect


@pytest.fixture
def no_hardware(monkeypatch):
    monkeypatch.delenv("TURNOUT_TARGET", raising=False)
    for name in ("npu_present", "cuda_present", "xpu_present", "mps_present"):
        monkeypatch.setattr(detect, name, lambda: (False, "absent in test"))
    monkeypatch.setattr(detect, "current_accelerator", lambda: None)


def test_cpu_when_nothing_is_present(no_hardware):
    assert default_spec() == "cpu"


def test_cuda_when_present(no_hardware, monkeypatch):
    monkeypatch.setattr(detect, "cuda_present", lambda: (True, "1 CUDA device(s)"))
    assert default_spec() == "cuda"
    assert get_backend("cuda").availability() == (True, "1 CUDA device(s)")


def test_npu_wins_over_cuda(no_hardware, monkeypatch):
    # transfer_to_npu makes torch.cuda claim availability on Ascend machines; npu must be chosen
    monkeypatch.setattr(detect, "cuda_present", lambda: (True, "lying"))
    monkeypatch.setattr(detect, "npu_present", lambda: (True, "8 NPU(s)"))
    assert default_spec() == "npu"


def test_env_override(no_hardware, monkeypatch):
    monkeypatch.setenv("TURNOUT_TARGET", "cpu:bf16")
    assert default_spec() == "cpu:bf16"
    assert get_backend().name == "cpu:bf16"


def test_env_override_bad_spec_is_clear(no_hardware, monkeypatch):
    from turnout.backend import TargetError
    monkeypatch.setenv("TURNOUT_TARGET", "tpu")
    with pytest.raises(TargetError, match="valid forms"):
        default_spec()


def test_broken_torch_npu_install_is_not_fatal(monkeypatch):
    """A torch_npu that fails on import (as inside CPU-only containers) reads as 'absent', with the reason."""
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "torch_npu" else None)
    broken = types.ModuleType("torch_npu")

    def boom(name, *a, **k):
        if name == "torch_npu":
            raise ImportError("libascendcl.so: cannot open shared object file")
        return real_import(name, *a, **k)

    import importlib
    real_import = importlib.import_module
    monkeypatch.setattr(importlib, "import_module", boom)
    monkeypatch.delitem(sys.modules, "torch_npu", raising=False)
    present, why = detect.npu_present()
    assert not present and "libascendcl" in why
    del broken


def test_cuda_lies_when_rebound(monkeypatch):
    import torch
    fake = types.ModuleType("torch_npu.npu")
    monkeypatch.setattr(torch, "cuda", fake)
    assert detect.cuda_lies()
    assert detect.cuda_present()[0] is False


def test_this_machine_has_no_cuda_build_or_device():
    # honest report on the CPU wheel: absent, with a reason
    ok, why = get_backend("cuda").availability()
    if not ok:
        assert why
