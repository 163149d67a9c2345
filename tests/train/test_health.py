import math

import pytest

from turnout.config import load_config
from turnout.train.health import HealthMonitor, TrustPolicy, Window
from turnout.train.rerun import relative_difference
from turnout.train.step import StepResult


def _h(**kw):
    return load_config(None, [f"health.{k}={v}" for k, v in kw.items()]).health


def _r(loss=2.0, grad=1.0, layers=None):
    return StepResult(loss, loss, 0.0, 0.0, grad, layers or {"layers.0": grad}, 64)


def test_window_stats_match_numpy():
    import numpy as np

    w = Window(5)
    vals = [1.0, 4.0, 2.0, 8.0, 5.0, 7.0, 3.0]
    for v in vals:
        w.push(v)
    mean, std, peak = w.stats()
    assert mean == pytest.approx(np.mean(vals[-5:])) and std == pytest.approx(np.std(vals[-5:]))
    assert peak == 8.0


def test_non_finite_is_rejected_at_once():
    m = HealthMonitor(_h())
    for bad in (_r(loss=math.nan), _r(grad=math.inf), _r(loss=-math.inf)):
        v = m.check(bad)
        assert v.reject and v.kinds == ["nan"] and not v.rollback


def test_spike_needs_history_and_persistence():
    m = HealthMonitor(_h(spike_min_steps=10, spike_patience=3, spike_window=32))
    import random

    rng = random.Random(0)
    for _ in range(9):
        r = _r(loss=3 + rng.uniform(-0.05, 0.05), grad=1 + rng.uniform(-0.1, 0.1))
        assert m.check(r).ok
        m.observe(r)
    assert m.check(_r(loss=30.0)).ok  # 9 steps of history: too early to call anything a spike
    m.observe(_r(loss=3.0))
    kinds = []
    for i in range(3):
        v = m.check(_r(loss=9.0, grad=50.0))
        kinds.append(v.kinds)
        assert v.rollback == (i == 2)
        m.observe(_r(loss=3.0))  # history stays normal in this test
    assert kinds[0] == ["spike", "grad_spike"]
    assert m.check(_r(loss=3.0)).ok and m.spiking == 0  # a healthy step ends the streak


def test_ratio_test_catches_spikes_in_a_noisy_window():
    m = HealthMonitor(_h(spike_min_steps=4, spike_sigma=1e6, spike_ratio=10.0))
    for g in (1.0, 5.0, 0.5, 3.0, 2.0):
        m.observe(_r(grad=g))
    v = m.check(_r(grad=60.0))
    assert v.kinds == ["grad_spike"] and "10x" in v.findings[0][1]


def test_trust_policy_windows():
    p = TrustPolicy(_h(max_device_errors=3, device_error_window=10, max_faults=2, fault_window=100))
    assert p.device_error(1) is None and p.device_error(5) is None
    assert p.device_error(20) is None  # 1 and 5 fell out of the 10-step window
    assert p.device_error(22) is None
    assert "3 device errors" in p.device_error(25)
    assert p.fault(40) is None and "2 silent data corruptions" in p.fault(90)


def test_relative_difference():
    a, b = _r(loss=2.0, grad=1.0), _r(loss=2.0, grad=1.0)
    assert relative_difference(a, b) == 0.0
    assert relative_difference(a, _r(loss=2.002, grad=1.0)) == pytest.approx(1e-3, rel=1e-3)
    assert relative_difference(a, _r(loss=math.nan)) == math.inf
    assert relative_difference(_r(loss=math.nan), _r(loss=math.nan)) == 0.0  # two NaNs agree (Megatron)
