"""Kernel choices: switching them in place keeps every value, and every combination computes the same model."""

import pytest
import torch

from turnout.model import LatentCache, Transformer, load_pretrained, save_pretrained

from .oracle import randomize_, rel_err, small_args


def _model(**kw):
    model = Transformer(small_args(**{"mtp_depth": 1, **kw}))
    randomize_(model, seed=5)
    return model


def test_set_kernels_keeps_values_and_changes_storage():
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.set_kernels(weight_layout="in_out", experts_impl="loop")
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    wq_a = model.layers[0].attn.wq_a.weight
    assert wq_a.shape == (48, 64) and wq_a.stride() == (1, 48)  # input-major storage of the same [out, in] tensor
    w13 = model.layers[1].ffn.experts.w13
    assert w13.mT.is_contiguous() and model.layers[1].ffn.experts.impl == "loop"
    assert model.args.weight_layout == "in_out" and model.args.experts_impl == "loop"
    model.set_kernels(weight_layout="out_in")
    assert wq_a.is_contiguous() and torch.equal(wq_a, before["layers.0.attn.wq_a.weight"])


def test_set_kernels_refuses_unknown_names_and_values():
    model = _model()
    with pytest.raises(ValueError, match="not kernel choices: n_layers"):
        model.set_kernels(n_layers=2)
    with pytest.raises(ValueError, match="weight_layout"):
        model.set_kernels(weight_layout="diagonal")
    assert model.args.weight_layout == "out_in"


@pytest.mark.parametrize("kernels", [dict(weight_layout="in_out"), dict(experts_impl="loop"), dict(norm_impl="explicit"),
                                     dict(weight_layout="in_out", experts_impl="loop", loss_impl="plain"),
                                     dict(attn_impl="blocked", norm_impl="explicit")])
def test_kernel_choices_compute_the_same_model(kernels):
    torch.manual_seed(0)
    ref, alt = _model(), _model()
    alt.set_kernels(**kernels)
    x, y = torch.randint(0, 512, (2, 16)), torch.randint(0, 512, (2, 16))
    out_ref, out_alt = ref(x, targets=y), alt(x, targets=y)
    torch.testing.assert_close(out_alt.loss, out_ref.loss, rtol=1e-5, atol=1e-6)
    out_ref.loss.backward()
    out_alt.loss.backward()
    grads = {n: p.grad for n, p in ref.named_parameters() if p.grad is not None}
    for n, p in alt.named_parameters():
        if n in grads:
            assert rel_err(p.grad, grads[n]) <= 1e-5, n
    with torch.no_grad():  # the decode path too: a cached prefill and two single-token steps
        ref.eval(), alt.eval()
        caches = [LatentCache(m.args, 2, 20) for m in (ref, alt)]
        a, b = (m(x[:, :10], cache=c, start_pos=0) for m, c in zip((ref, alt), caches))
        assert rel_err(b, a) <= 1e-5
        for t in (10, 11):
            a, b = (m(x[:, t:t + 1], cache=c, start_pos=[t, t]) for m, c in zip((ref, alt), caches))
            assert rel_err(b, a) <= 1e-5


def test_input_major_model_saves_and_loads(tmp_path):
    model = _model(mtp_depth=0).set_kernels(weight_layout="in_out")
    save_pretrained(model, tmp_path)
    back = load_pretrained(tmp_path)
    assert back.args.weight_layout == "in_out" and back.layers[0].attn.wq_a.weight.stride() == (1, 48)
    x = torch.randint(0, 512, (1, 12))
    with torch.no_grad():
        assert torch.equal(back(x), model(x))
