import math

import pytest

from turnout.config import load_config
from turnout.train.schedule import lr_at


def _t(**kw):
    return load_config(None, [f"train.{k}={v!r}" if isinstance(v, str) else f"train.{k}={v}" for k, v in kw.items()]).train


def test_warmup_then_cosine_to_floor():
    t = _t(steps=100, warmup_steps=10, lr=1.0, min_lr_ratio=0.1, schedule="cosine")
    assert lr_at(0, t) == pytest.approx(0.1)
    assert lr_at(9, t) == pytest.approx(1.0)
    assert lr_at(10, t) == pytest.approx(1.0)
    assert lr_at(55, t) == pytest.approx(0.55)
    assert lr_at(100, t) == pytest.approx(0.1)
    lrs = [lr_at(s, t) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_wsd_holds_then_decays_linearly():
    t = _t(steps=100, warmup_steps=0, lr=0.8, min_lr_ratio=0.0, schedule="wsd", decay_fraction=0.2)
    assert lr_at(0, t) == 0.8 and lr_at(79, t) == 0.8
    assert lr_at(90, t) == pytest.approx(0.4)
    assert lr_at(100, t) == pytest.approx(0.0)


def test_constant_and_scale():
    t = _t(steps=10, warmup_steps=0, lr=0.5, schedule="constant")
    assert {lr_at(s, t) for s in range(10)} == {0.5}
    assert lr_at(3, t, scale=0.9) == pytest.approx(0.45)
    assert all(math.isfinite(lr_at(s, _t(steps=5, warmup_steps=5))) for s in range(5))
