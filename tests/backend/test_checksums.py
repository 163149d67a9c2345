"""Row checksums of products: no false alarm on fresh random operands of many shapes and dtypes, a flip of a high
bit in any product's output is caught (forward and backward), non-finite inputs are not blamed on the product."""

import math

import pytest
import torch

from turnout.backend import get_backend
from turnout.backend.abft import Precision, check_grouped, check_product
from turnout.backend.checksums import ChecksumMode
from turnout.backend.sim_faults import flip_bit

DTYPES = [torch.float32, torch.bfloat16]


def _clean_ratio(diff, bound) -> float:
    return float((diff / bound).max())


@pytest.mark.parametrize("dtype", DTYPES)
def test_no_false_alarm_on_random_products(dtype):
    gen = torch.Generator().manual_seed(1)
    worst = 0.0
    for _ in range(60):
        m, k, n = (int(v) for v in torch.randint(1, 200, (3,), generator=gen))
        scale = 10.0 ** float(torch.randn((), generator=gen) * 3)
        a = (torch.randn(m, k, generator=gen) * scale).to(dtype)
        b = torch.randn(k, n, generator=gen).to(dtype)
        p = Precision.of(dtype, dtype, "cpu")
        worst = max(worst, _clean_ratio(*check_product(a, b, a @ b, p)))
        bias = torch.randn(n, generator=gen).to(dtype)
        out = torch.addmm(bias, a, b, beta=0.5, alpha=2.0)
        worst = max(worst, _clean_ratio(*check_product(a, b, out, p, alpha=2.0, beta=0.5,
                                                       m_rows=bias.expand(out.shape).sum(-1, dtype=torch.float32))))
        wt = torch.randn(n, k, generator=gen).to(dtype)  # a transposed weight, as F.linear passes it
        worst = max(worst, _clean_ratio(*check_product(a, wt.t(), a @ wt.t(), p)))
    assert worst < 1.0


@pytest.mark.parametrize("dtype", DTYPES)
def test_grouped_products_check_clean_and_catch_flips(dtype):
    torch.manual_seed(0)
    p = Precision.of(dtype, dtype, "cpu")
    x = torch.randn(96, 32).to(dtype)
    w = torch.randn(4, 48, 32).to(dtype)
    offs = torch.tensor([10, 40, 40, 96], dtype=torch.int32)  # one expert gets no rows
    fwd = torch._grouped_mm(x, w.transpose(1, 2), offs=offs)  # [96, 48]
    dy = torch.randn(96, 48).to(dtype)
    dw = torch._grouped_mm(dy.t(), x, offs=offs)  # [4, 48, 32]: weight gradient, the shared dim grouped
    for a, b, c in ((x, w.transpose(1, 2), fwd), (dy.t(), x, dw)):
        diff, bound = check_grouped(a, b, c, offs, p)
        assert float((diff / bound).max()) < 1.0
        top = 14 if dtype == torch.bfloat16 else 30  # the top exponent bit
        bad, _ = flip_bit(c, c.numel() // 3, top)
        diff, bound = check_grouped(a, b, bad.view(c.shape), offs, p)
        assert bool((diff > bound).any())


def test_flips_of_high_bits_of_fp32_outputs_are_all_caught():
    """Sign, exponent and the top three mantissa bits of a float32 product output, at many elements."""
    torch.manual_seed(2)
    a, b = torch.randn(256, 128), torch.randn(128, 96)
    c = a @ b
    p = Precision.of(torch.float32, torch.float32, "cpu")
    missed = []
    for bit in range(20, 32):
        for j in range(40):
            index = int(torch.randint(c.numel(), ()))
            bad, _ = flip_bit(c, index, bit)
            diff, bound = check_product(a, b, bad.view(c.shape), p)
            if not bool((diff > bound).any()):
                missed.append((bit, float(c.view(-1)[index])))
    assert len(missed) <= 2, missed  # a flip can only hide in an element within ~1e-3 of zero


def test_non_finite_inputs_are_not_the_products_fault_but_a_non_finite_result_is():
    p = Precision.of(torch.float32, torch.float32, "cpu")
    a, b = torch.randn(8, 16), torch.randn(16, 4)
    a[3, 2] = math.nan
    diff, bound = check_product(a, b, a @ b, p)
    assert bool((diff <= bound).all())
    a[3, 2] = 1.0
    c = a @ b
    c[5, 1] = math.inf
    diff, bound = check_product(a, b, c, p)
    assert not bool((diff <= bound)[5]) and bool((diff <= bound)[:5].all())


def test_the_mode_checks_forward_and_backward_products_and_counts_what_it_cannot():
    torch.manual_seed(3)
    x = torch.randn(4, 8, 16, requires_grad=True)
    w = torch.randn(16, 16, requires_grad=True)
    mode = ChecksumMode()
    checks = mode.start()
    with mode:
        h = x @ w  # bmm-free: 3-D @ 2-D is one mm over the flattened rows
        q = h.transpose(1, 2) @ h  # bmm
        v = torch.mv(w, x[0, 0])  # a vector product: not checked, counted
        (q.sum() + v.sum()).backward()
    phases = {phase for _, phase, _, _ in checks.calls}
    assert phases == {"forward", "backward"} and len(checks) >= 5
    assert not checks.collect()
    assert checks.unchecked["aten::mv"] >= 1


def test_a_target_that_cannot_run_the_checks_is_refused(tmp_path):
    profile = tmp_path / "p.toml"
    profile.write_text('[profile]\ndescription = "no norms"\n[[fault]]\nkind = "missing_op"\n'
                       'ops = ["linalg_vector_norm"]\n')
    assert get_backend("cpu").checksum_refusal() is None
    reason = get_backend(f"sim:{profile}").checksum_refusal()
    assert reason and "linalg_vector_norm" in reason


def test_training_on_such_a_target_exits_2_in_one_line_before_any_step(tmp_path, capsys):
    from turnout.cli.main import main

    profile = tmp_path / "p.toml"
    profile.write_text('[profile]\ndescription = "no norms"\n[[fault]]\nkind = "missing_op"\n'
                       'ops = ["linalg_vector_norm"]\n')
    run = tmp_path / "run"
    assert main(["train", "--config", "configs/debug.toml", "--target", f"sim:{profile}", "--out", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "health.checksums=true" in err[0] and "linalg_vector_norm" in err[0]
    assert not (run / "metrics.jsonl").exists()
