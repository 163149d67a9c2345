"""DeepSeekMoE: routing properties, expert implementations, balance loss, aux-loss-free bias update."""

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from turnout.model import Transformer
from turnout.model.moe import MoE, Experts, Gate

from .oracle import small_args


@st.composite
def routing_cases(draw):
    G = draw(st.sampled_from([1, 2, 4, 8]))
    per_group = draw(st.integers(2, 6))
    E = G * per_group
    topk_group = draw(st.integers(1, G))
    k = draw(st.integers(1, topk_group * per_group))
    return dict(n_routed_experts=E, n_expert_groups=G, n_limited_groups=topk_group, n_activated_experts=k,
                route_scale=draw(st.sampled_from([1.0, 2.5])), norm_topk_prob=draw(st.booleans()),
                seed=draw(st.integers(0, 2**16)))


def _reference_route(x, weight, bias, G, topk_group, k):
    """float64 DeepSeek noaux_tc selection: kept groups by top-2 sums of biased scores, top-k inside them."""
    scores = torch.sigmoid(x.double() @ weight.double().T)
    biased = scores + bias.double()
    N, E = biased.shape
    grouped = biased.view(N, G, E // G)
    keep = grouped.topk(2, dim=-1).values.sum(-1).topk(topk_group, dim=-1).indices  # [N, topk_group]
    allowed = torch.zeros(N, G, dtype=torch.bool).scatter_(1, keep, True)
    masked = grouped.masked_fill(~allowed.unsqueeze(-1), float("-inf")).view(N, E)
    return scores, allowed, masked.topk(k, dim=-1).indices


@settings(max_examples=40, deadline=None)
@given(routing_cases())
def test_routing_properties(case):
    seed = case.pop("seed")
    args = small_args(**case)
    g = torch.Generator().manual_seed(seed)
    gate = Gate(args)
    with torch.no_grad():
        gate.weight.copy_(torch.randn(gate.weight.shape, generator=g))
        gate.bias.copy_(0.5 * torch.randn(gate.bias.shape, generator=g))
    x = torch.randn(64, args.dim, generator=g) / args.dim ** 0.5
    weights, idx, scores = gate(x)
    E, G, k = args.n_routed_experts, args.n_expert_groups, args.n_activated_experts
    ref_scores, allowed, ref_idx = _reference_route(x, gate.weight, gate.bias, G, args.n_limited_groups, k)
    # exactly k distinct experts per token
    assert idx.shape == (64, k) and (idx.sort(-1).values.diff(dim=-1) > 0).all()
    # only from kept groups, and exactly the reference choice
    assert allowed.gather(1, idx // (E // G)).all()
    assert torch.equal(idx.sort(-1).values, ref_idx.sort(-1).values)
    # weights: the unbiased scores of the chosen experts, normalised (when asked) then scaled
    w = ref_scores.gather(1, idx)
    if args.norm_topk_prob:
        w = w / w.sum(-1, keepdim=True)
        assert torch.allclose(weights.sum(-1).double(), torch.full((64,), args.route_scale, dtype=torch.float64))
    assert torch.allclose(weights.double(), w * args.route_scale, atol=1e-6)
    assert weights.dtype == torch.float32 and scores.dtype == torch.float32


def test_router_runs_in_fp32_under_bf16():
    gate = Gate(small_args()).to(torch.bfloat16)
    weights, _, scores = gate(torch.randn(8, 64, dtype=torch.bfloat16))
    assert weights.dtype == scores.dtype == torch.float32


def _routed(args, N=300, seed=0):
    """Random tokens routed to 2 distinct experts each, never to expert 5 (an empty group)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, args.dim, generator=g)
    allowed = torch.tensor([0, 1, 2, 3, 4, 6, 7])
    idx = allowed[torch.rand(N, 7, generator=g).argsort(-1)[:, :2]]
    return x, torch.rand(N, 2, generator=g), idx


def test_grouped_and_loop_experts_agree_with_grads():
    args = small_args()
    x, w, idx = _routed(args)
    counts = torch.bincount(idx.flatten(), minlength=args.n_routed_experts)
    assert counts[5] == 0
    results = []
    for impl in ("grouped", "loop"):
        torch.manual_seed(0)
        ex = Experts(args.replace(experts_impl=impl))
        torch.nn.init.normal_(ex.w13, std=0.1), torch.nn.init.normal_(ex.w2, std=0.1)
        xi, wi = x.clone().requires_grad_(), w.clone().requires_grad_()
        out = ex(xi, wi, idx, counts)
        out.square().sum().backward()
        results.append((out, xi.grad, wi.grad, ex.w13.grad, ex.w2.grad))
    # reference: explicit per-token loop in float64
    ex64 = copy.deepcopy(ex).double()
    ref = torch.zeros(x.shape, dtype=torch.float64)
    for n in range(len(x)):
        for j in range(2):
            e = idx[n, j]
            g, u = (ex64.w13[e] @ x[n].double()).chunk(2)
            ref[n] += w[n, j].double() * (ex64.w2[e] @ (torch.nn.functional.silu(g) * u))
    assert (results[0][0].double() - ref).abs().max() < 1e-5
    for a, b in zip(*results):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)
    assert results[0][3][5].abs().max() == 0  # the empty expert gets a zero gradient, not garbage


def test_balance_loss_matches_formula():
    args = small_args(aux_loss_alpha=0.01)
    moe = MoE(args).train()
    torch.nn.init.normal_(moe.gate.weight, std=0.5)
    torch.nn.init.normal_(moe.experts.w13, std=0.02), torch.nn.init.normal_(moe.experts.w2, std=0.02)
    for p in moe.shared_experts.parameters():
        torch.nn.init.normal_(p, std=0.02)
    x = torch.randn(3, 10, args.dim)
    _, balance = moe(x)
    _, idx, scores = moe.gate(x.view(-1, args.dim))
    E, k, T = args.n_routed_experts, args.n_activated_experts, 10
    s, idx = scores.double().view(3, T, E), idx.view(3, T, k)
    ref = 0.0
    for b in range(3):
        f = torch.stack([(idx[b] == i).any(-1).sum() for i in range(E)]).double() * E / (k * T)
        P = (s[b] / s[b].sum(-1, keepdim=True)).mean(0)
        ref += 0.01 * (f * P).sum() / 3
    assert balance.item() == pytest.approx(ref.item(), rel=1e-5)
    balance.backward()
    assert moe.gate.weight.grad.abs().sum() > 0


def test_loads_are_counted_in_training_only():
    model = Transformer(small_args())
    tokens = torch.randint(0, 512, (2, 16))
    model.eval()(tokens)
    assert model.expert_loads().sum() == 0
    model.train()(tokens)
    loads = model.expert_loads()
    assert loads.shape == (2, 8)
    assert (loads.sum(-1) == 2 * 16 * 2).all()  # every token routed to k=2 experts in each MoE layer


def test_update_expert_bias_applies_sign_rule_and_resets():
    model = Transformer(small_args()).train()
    model(torch.randint(0, 512, (4, 16)))
    before = [m.gate.bias.clone() for m in model.moe_layers()]
    loads = model.update_expert_bias(gamma=0.01)
    assert model.expert_loads().sum() == 0
    for m, b, load in zip(model.moe_layers(), before, loads):
        assert torch.allclose(m.gate.bias - b, 0.01 * torch.sign(load.mean() - load))
    assert "layers.1.ffn.gate.bias" in model.state_dict()
    assert all("gate.bias" not in n for n, _ in model.named_parameters())
    model(torch.randint(0, 512, (4, 16)))
    frozen = [m.gate.bias.clone() for m in model.moe_layers()]
    model.update_expert_bias(gamma=0.0)  # measure only
    assert all(torch.equal(m.gate.bias, b) for m, b in zip(model.moe_layers(), frozen))


def test_bias_update_balances_a_skewed_stream():
    """Inputs leaning towards two experts: the sign rule alone (no gradients) evens the loads out."""
    args = small_args(n_expert_groups=1, n_limited_groups=1)
    moe = MoE(args)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        moe.gate.weight.copy_(torch.randn(8, args.dim, generator=g) / args.dim ** 0.5)
        moe.gate.weight[:2] += 0.1  # experts 0 and 1 win for inputs with a positive mean

    def loads(batches):  # the routing part of MoE.forward: tokens per expert
        idx = torch.cat([moe.gate(torch.randn(256, args.dim, generator=g) + 0.3)[1] for _ in range(batches)])
        return torch.bincount(idx.flatten(), minlength=8).float()

    def imbalance(load):
        return (load.max() / load.mean()).item()

    with torch.no_grad():
        first = imbalance(loads(10))
        for _ in range(200):
            moe.update_bias(loads(1), gamma=0.01)
        last = imbalance(loads(10))
    assert first > 2.5 and last < 1.3, (first, last)
    assert moe.gate.bias[:2].max() < moe.gate.bias[2:].min()  # the favoured experts were pushed down
