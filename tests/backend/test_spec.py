import pytest
import torch

from turnout.backend import TargetError, canonical_spec, parse_spec


@pytest.mark.parametrize("text, device, dtype, profile", [
    ("cpu", "cpu", None, None),
    ("cpu:fp32", "cpu", "fp32", None),
    ("CPU:BF16", "cpu", "bf16", None),
    ("cuda", "cuda", None, None),
    ("cuda:bf16", "cuda", "bf16", None),
    ("npu:bf16", "npu", "bf16", None),
    ("xpu", "xpu", None, None),
    ("mps", "mps", None, None),
    ("sim:flaky", "sim", None, "flaky"),
    ("sim:healthy:bf16", "sim", "bf16", "healthy"),
    ("sim:/tmp/my:chip.toml", "sim", None, "/tmp/my:chip.toml"),
    ("sim:path/to/p.toml:fp16", "sim", "fp16", "path/to/p.toml"),
])
def test_good_specs(text, device, dtype, profile):
    s = parse_spec(text)
    assert (s.device, s.dtype, s.profile) == (device, dtype, profile)
    assert parse_spec(str(s)) == s and canonical_spec(f" {text} ") == str(s)


def test_torch_dtype():
    assert parse_spec("cuda:bf16").torch_dtype is torch.bfloat16
    assert parse_spec("cpu").torch_dtype is None


@pytest.mark.parametrize("text, fragment", [
    ("", "empty"), ("  ", "empty"), ("tpu", "device 'tpu'"), ("cpu:int8", "bad dtype"), ("cuda:bf16:x", "bad dtype"),
    ("sim", "names no profile"), ("sim:", "names no profile"), ("sim::bf16", "names no profile"),
    # a trailing ':' is a dtype left out, not the default dtype (and for sim, not part of the profile's name)
    ("cpu:", "ends in ':' with no dtype"), ("CUDA: ", "ends in ':' with no dtype"),
    ("sim:flaky:", "ends in ':' with no dtype"), ("sim::", "ends in ':' with no dtype"),
])
def test_bad_specs_list_the_valid_forms(text, fragment):
    with pytest.raises(TargetError) as e:
        parse_spec(text)
    assert fragment in str(e.value) and "valid forms" in str(e.value) and "\n" not in str(e.value)
