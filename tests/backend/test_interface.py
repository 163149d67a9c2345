import pytest
import torch

from turnout.backend import get_backend
from turnout.config import load_config


def test_cpu_probes_dtypes_by_running_them():
    b = get_backend("cpu")
    probed = b.probe_dtypes()
    assert set(probed) == {"fp32", "bf16", "fp16"}
    assert probed["fp32"] is None
    assert "fp32" in b.dtypes()
    assert b.compute_dtype() == torch.float32


def test_failed_probe_is_reported(monkeypatch):
    b = get_backend("cpu")

    def broken(dtype):
        return "RuntimeError: no kernel" if dtype == torch.bfloat16 else None

    monkeypatch.setattr(b, "_probe_one", broken)
    assert b.dtypes() == ["fp32", "fp16"]
    reasons = b.validate(load_config(None, ["train.dtype=bf16"]))
    assert any("bf16" in r and "no kernel" in r for r in reasons)


def test_validate_refuses_without_editing():
    cfg = load_config(None, ["train.dtype=bf16"])
    before = cfg.to_dict()
    reasons = get_backend("cpu:fp32").validate(cfg)
    assert any("conflicts" in r for r in reasons)
    assert cfg.to_dict() == before
    assert get_backend("cpu").validate(load_config()) == []
    assert any("fp16" in r for r in get_backend("cpu:fp16").validate(load_config()))


def test_unavailable_target_says_why():
    b = get_backend("cuda")
    if b.is_available():
        pytest.skip("a CUDA device is present")
    reasons = b.validate(load_config())
    assert len(reasons) == 1 and "not available" in reasons[0]
    info = b.describe()
    assert info["available"] is False and info["collective"] == "nccl" and info["dtypes"] == []


def test_rng_state_round_trip():
    b = get_backend("cpu")
    b.manual_seed(3)
    state = b.get_rng_state()
    a = torch.randn(5)
    b.set_rng_state(state)
    assert torch.equal(a, torch.randn(5))


def test_memory_and_peak():
    b = get_backend("cpu")
    m = b.memory_stats()
    assert m["allocated"] > 0 and m["total"] > m["allocated"]
    peak = b.matmul_peak("fp32", max_size=512, repeats=3)
    assert 1e8 < peak < 1e14
    assert b.matmul_peak("fp32") == peak  # cached


@pytest.mark.parametrize("spec, collective, env", [
    ("cpu", "gloo", ""), ("cuda", "nccl", "CUDA_VISIBLE_DEVICES"), ("npu", "hccl", "ASCEND_RT_VISIBLE_DEVICES"),
    ("xpu", "xccl", "ZE_AFFINITY_MASK"), ("mps", "none", ""),
])
def test_collective_and_visible_devices(spec, collective, env):
    b = get_backend(spec)
    assert (b.collective, b.visible_devices_env) == (collective, env)


def test_inference_kernels_are_valid_model_kernel_choices():
    from turnout.backend.registry import known_targets
    from turnout.model import ModelArgs
    from turnout.model.args import KERNEL_FIELDS

    for spec in known_targets():
        kernels = get_backend(spec).inference_kernels()
        assert set(kernels) <= set(KERNEL_FIELDS), spec
        ModelArgs().replace(**kernels).check()
    assert get_backend("cuda").inference_kernels() == {}  # GPUs keep nn.Linear's layout and grouped experts
