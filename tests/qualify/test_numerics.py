"""The judging rules on tensors with known errors."""

from __future__ import annotations

import math

import pytest
import torch

from turnout.qualify.numerics import (RATIO_FLOOR, ErrStats, bitwise_equal, elementwise, judge_elementwise,
                                      judge_normwise, normwise, score, tolerance, ulp_distance)


def test_tolerances_are_torch_testings():
    assert tolerance(torch.float32) == (1.3e-6, 1e-5)
    assert tolerance(torch.bfloat16) == (1.6e-2, 1e-5)
    assert tolerance(torch.float16) == (1e-3, 1e-5)
    assert tolerance(torch.int64) == (0.0, 0.0)


def test_elementwise_counts_the_share_outside_atol_plus_rtol():
    e = torch.ones(1000, dtype=torch.float64)
    a = e.clone().float()
    a[:10] += 1e-3  # 10 of 1000 elements 1e-3 off: far outside fp32 tolerance
    s = elementwise(a, e)
    assert s.ratio == pytest.approx(0.01) and s.max_rel == pytest.approx(1e-3, rel=1e-3)
    assert elementwise(e.float(), e).ratio == 0.0


def test_nan_matches_nan_but_not_a_number():
    e = torch.tensor([1.0, math.nan, math.inf], dtype=torch.float64)
    assert elementwise(torch.tensor([1.0, math.nan, math.inf]), e).ratio == 0.0
    s = elementwise(torch.tensor([1.0, 2.0, math.inf]), e)
    assert s.ratio == pytest.approx(1 / 3) and math.isinf(s.max_rel)


def test_integer_outputs_must_match_exactly():
    s = elementwise(torch.tensor([1, 2, 3, 4]), torch.tensor([1, 2, 3, 5]))
    assert s.exact_only and s.ratio == 0.25


def test_target_may_be_as_inexact_as_the_reference_times_a_factor():
    ref = ErrStats(ratio=0.01, max_rel=1e-5)
    assert judge_elementwise(ErrStats(ratio=0.019, max_rel=9e-5), ref, torch.float32) is None
    assert "error ratio" in judge_elementwise(ErrStats(ratio=0.03, max_rel=1e-5), ref, torch.float32)
    assert "max relative" in judge_elementwise(ErrStats(ratio=0.0, max_rel=2e-4), ref, torch.float32)
    # an exact reference leaves the floor: up to 1e-3 of the elements, and max rel error within rtol
    exact = ErrStats()
    assert judge_elementwise(ErrStats(ratio=RATIO_FLOOR, max_rel=1e-6), exact, torch.float32) is None
    assert judge_elementwise(ErrStats(ratio=0.0, max_rel=2e-6), exact, torch.float32) is not None


@pytest.mark.parametrize("t, r", [(ErrStats(0.5, 1e-2), ErrStats(0.1, 1e-3)),
                                  (ErrStats(0.1, 1e-3), ErrStats(0.1, 1e-3)),
                                  (ErrStats(0.0, 2e-6), ErrStats()), (ErrStats(0.002, 0.0), ErrStats())])
def test_score_above_one_exactly_when_the_rule_fails(t, r):
    assert (score(t, r, torch.float32) > 1) == (judge_elementwise(t, r, torch.float32) is not None)


def test_normwise_and_its_rule():
    e = torch.randn(1000, dtype=torch.float64)
    n = normwise((e * 1.05).float(), e)
    assert n.err == pytest.approx(0.05, rel=1e-4) and n.cosine == pytest.approx(1.0)
    assert judge_normwise(1e-6, 1e-7, torch.float32) is None  # 10x the reference's is still fine
    assert judge_normwise(5e-4, 4e-7, torch.float32) is not None
    assert judge_normwise(math.inf, 1e-7, torch.float32) is not None


def test_bitwise_and_ulp():
    a = torch.randn(100)
    b = a.clone()
    assert bitwise_equal(a, b) and ulp_distance(a, b) == 0
    b[3] = torch.nextafter(b[3], torch.tensor(math.inf))
    assert not bitwise_equal(a, b) and 0 < ulp_distance(b, a) <= 1
    nan = torch.tensor([math.nan])
    assert bitwise_equal(nan, nan.clone())
