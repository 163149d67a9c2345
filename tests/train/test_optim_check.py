"""The AdamW step's second evaluation: clean steps pass (no false alarm), a flipped bit written into a parameter or
a moment fails, and the step taken again from the saved state is bit-identical to an unfaulted one."""

import pytest
import torch

from turnout.config import load_config
from turnout.train.build import build_model
from turnout.backend.sim_faults import flip_bit
from turnout.train.optim_check import mismatches

CFG = ["model.preset='debug'", "train.batch_size=2", "train.seq_len=16"]


def _built():
    return build_model(load_config(None, CFG), "cpu")


def _batch(b, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, b.args.vocab_size, (2, 16), generator=g)
    return [(x, torch.roll(x, -1, 1))]


def test_clean_steps_pass():
    b = _built()
    for s in range(6):
        r = b.runner.compute(_batch(b, s))
        b.runner.apply(r, 3e-3)
        assert b.runner.optimizer_findings == [[]], (s, b.runner.optimizer_findings)


@pytest.mark.parametrize("what, bit", [("param", 26), ("exp_avg", 30), ("exp_avg_sq", 23)])
def test_a_flip_written_by_the_step_is_caught_and_the_retaken_step_is_clean(monkeypatch, what, bit):
    clean, faulty = _built(), _built()
    for s in range(3):
        for b in (clean, faulty):
            b.runner.apply(b.runner.compute(_batch(b, s)), 3e-3)
    real = torch.optim.AdamW.step
    fired = []

    def step(self, *a, **k):
        out = real(self, *a, **k)
        if self is faulty.optimizer and not fired:
            fired.append(1)
            p = faulty.inner.layers[1].attn.wo.weight
            t = p.data if what == "param" else self.state[p][what]
            new, _ = flip_bit(t, 77, bit)
            t.copy_(new.view(t.shape))
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    for b in (clean, faulty):
        b.runner.apply(b.runner.compute(_batch(b, 9)), 3e-3)
    first, again = faulty.runner.optimizer_findings
    assert any(w.startswith(f"{what} of layers.1.attn.wo.weight") for w, _ in first) and not again
    for (n, p), q in zip(clean.inner.named_parameters(), faulty.inner.parameters()):
        assert torch.equal(p, q), n


def test_mismatches_reads_nan_as_a_failure():
    found = mismatches(["a", "b"], torch.tensor([0.5, float("nan")]))
    assert [w for w, _ in found] == ["b"]
