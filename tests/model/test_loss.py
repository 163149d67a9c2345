"""The fused (chunked, logits-free) head + cross-entropy against the plain one."""

import pytest
import torch
import torch.nn.functional as F

from turnout.model import Transformer
from turnout.model.loss import cross_entropy

from .oracle import small_args


@pytest.mark.parametrize("n, chunk", [(300, 128), (64, 512)])
def test_fused_matches_plain_loss_and_grads(n, chunk):
    h = torch.randn(n, 32, requires_grad=True)
    w = (0.3 * torch.randn(200, 32)).requires_grad_()
    t = torch.randint(0, 200, (n,))
    t[::7] = -100
    ref = F.cross_entropy(F.linear(h.double(), w.double()), t, ignore_index=-100)
    ref.backward(torch.tensor(2.0, dtype=torch.float64))
    gh, gw = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    out = cross_entropy(h, w, t, impl="fused", chunk=chunk)
    (2 * out).backward()
    assert abs(out.item() - ref.item()) < 1e-5
    assert torch.allclose(h.grad, gh.float(), atol=1e-6) and torch.allclose(w.grad, gw.float(), atol=1e-6)
    with torch.no_grad():
        assert abs(cross_entropy(h, w, t, impl="fused", chunk=chunk).item() - ref.item()) < 1e-5
    assert abs(cross_entropy(h, w, t, impl="plain").item() - ref.item()) < 1e-5


def test_all_ignored_is_zero_with_zero_grads():
    h = torch.randn(10, 8, requires_grad=True)
    w = torch.randn(20, 8, requires_grad=True)
    loss = cross_entropy(h, w, torch.full((10,), -100))
    loss.backward()
    assert loss == 0 and h.grad.abs().max() == 0 and w.grad.abs().max() == 0


@pytest.mark.parametrize("tie", [False, True])
def test_model_fused_equals_plain(tie):
    args = small_args(mtp_depth=1, tie_embeddings=tie)
    tokens = torch.randint(0, args.vocab_size, (2, 33))
    grads = []
    for impl in ("fused", "plain"):
        torch.manual_seed(0)
        model = Transformer(args.replace(loss_impl=impl))
        out = model(tokens[:, :-1], targets=tokens[:, 1:])
        out.loss.backward()
        grads.append((out.loss.detach(), [p.grad for p in model.parameters()]))
    assert torch.allclose(grads[0][0], grads[1][0], atol=1e-6)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(grads[0][1], grads[1][1]))


def test_bf16_head_weight():
    h = torch.randn(40, 16, dtype=torch.bfloat16, requires_grad=True)
    w = torch.randn(50, 16, dtype=torch.bfloat16, requires_grad=True)
    t = torch.randint(0, 50, (40,))
    loss = cross_entropy(h, w, t)
    loss.backward()
    ref = F.cross_entropy(F.linear(h.float(), w.float()), t)
    assert loss.dtype == torch.float32 and abs(loss.item() - ref.item()) < 2e-2
    assert h.grad.dtype == w.grad.dtype == torch.bfloat16
