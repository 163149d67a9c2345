"""Transformer: forward contract, losses (CE, MTP, balance), gradients, dtype/meta/dispatch-mode robustness."""

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from turnout.model import LatentCache, ModelArgs, ModelOutput, Transformer

from .oracle import randomize_, small_args


def _batch(args, B=2, T=24, seed=0):
    tokens = torch.randint(0, args.vocab_size, (B, T + 1), generator=torch.Generator().manual_seed(seed))
    return tokens[:, :-1], tokens[:, 1:]


def test_forward_contract():
    args = small_args(mtp_depth=1)
    model = Transformer(args)
    x, y = _batch(args)
    logits = model(x)
    assert isinstance(logits, torch.Tensor) and logits.shape == (2, 24, args.vocab_size)
    out = model(x, targets=y)
    assert isinstance(out, ModelOutput) and out.logits is None and out.loss.ndim == 0
    assert torch.allclose(model(x, targets=y, return_logits=True).logits, logits)
    assert isinstance(model.layers, torch.nn.ModuleList) and len(model.layers) == args.n_layers
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_losses_compose_and_respond_to_their_weights():
    args = small_args(mtp_depth=2, aux_loss_alpha=0.01, mtp_loss_weight=0.3)
    model = Transformer(args).train()
    x, y = _batch(args)
    out = model(x, targets=y)
    for part in (out.loss, out.ce, out.mtp, out.balance):
        assert torch.isfinite(part) and part > 0
    assert torch.allclose(out.loss, out.ce + 0.3 * out.mtp + out.balance)

    def with_args(**kw):
        m = Transformer(args.replace(**kw)).train()
        m.load_state_dict(model.state_dict())
        return m(x, targets=y)

    heavier = with_args(mtp_loss_weight=0.6, aux_loss_alpha=0.02)
    assert torch.allclose(heavier.ce, out.ce) and torch.allclose(heavier.mtp, out.mtp)
    assert torch.allclose(heavier.balance, 2 * out.balance)
    assert torch.allclose(heavier.loss, out.ce + 0.6 * out.mtp + 2 * out.balance)
    off = with_args(mtp_loss_weight=0.0, aux_loss_alpha=0.0)
    assert off.balance == 0 and torch.allclose(off.loss, out.ce)
    model.eval()
    assert model(x, targets=y).balance == 0  # the balance loss is a training-time term


def test_mtp_loss_matches_explicit_shifted_reference():
    """Depth 1 on the full length with wrapped inputs equals running it on the T-1 positions that have a t_{i+1}."""
    args = small_args(mtp_depth=1)
    model = Transformer(args).eval()
    randomize_(model, seed=3)
    x, y = _batch(args, T=20)
    out = model(x, targets=y)
    with torch.no_grad():
        h = model.embed(x)
        cos, sin = model.rope(torch.arange(20), h.dtype)
        for layer in model.layers:
            h, _ = layer(h, cos, sin)
        h = model.norm(h)
        mtp = model.mtp[0]
        _, out1, _ = mtp(h[:, :-1], model.embed(x[:, 1:]), cos[:-1], sin[:-1])
        ref = F.cross_entropy(model.head(out1).flatten(0, 1), y[:, 1:].flatten())
        assert torch.allclose(out.mtp, ref, rtol=1e-5)
        assert torch.allclose(out.ce, F.cross_entropy(model(x).flatten(0, 1), y.flatten()), rtol=1e-5)


def test_ignored_targets():
    args = small_args(ignore_index=-1)
    model = Transformer(args)
    x, y = _batch(args)
    y = y.clone()
    y[0, :10] = -1
    ref = F.cross_entropy(model(x).flatten(0, 1), y.flatten(), ignore_index=-1)
    assert torch.allclose(model(x, targets=y).ce, ref)
    out = model(x, targets=torch.full_like(y, -1))
    assert out.loss == 0 and torch.isfinite(out.loss)
    out.loss.backward()  # no NaN gradients either
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("tie", [False, True])
def test_gradients_reach_every_trainable_parameter(tie):
    args = small_args(mtp_depth=1, aux_loss_alpha=0.01, tie_embeddings=tie)
    model = Transformer(args).train()
    x, y = _batch(args, B=4, T=32)
    model(x, targets=y).loss.backward()
    loads = {id(m): m.loads for m in model.moe_layers()}
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        if name.endswith("experts.w13") or name.endswith("experts.w2"):
            moe = next(m for m in model.moe_layers() if m.experts.w13 is p or m.experts.w2 is p)
            used = loads[id(moe)] > 0
            assert used.any() and (p.grad[used].flatten(1).abs().sum(-1) > 0).all(), name
        else:
            assert p.grad.abs().sum() > 0, name
    for m in model.moe_layers():
        assert not m.gate.bias.requires_grad and m.gate.bias.grad is None


def test_training_steps_reduce_loss():
    args = ModelArgs.preset("debug")
    torch.manual_seed(0)
    model = Transformer(args).train()
    x, y = _batch(args, B=4, T=32)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        loss = model(x, targets=y).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.update_expert_bias()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 1.0, losses


class _Perturb(TorchDispatchMode):
    """A stand-in for a fault-injecting emulated accelerator: sees every aten op, optionally nudges mm outputs."""

    def __init__(self, eps=0.0):
        super().__init__()
        self.eps, self.ops = eps, set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.add(func.__name__.split(".")[0])
        out = func(*args, **(kwargs or {}))
        if self.eps and func in (torch.ops.aten.mm.default, torch.ops.aten._grouped_mm.default):
            out = out * (1 + self.eps)
        return out


def test_runs_under_a_torch_dispatch_mode():
    args = small_args(mtp_depth=1, aux_loss_alpha=0.01)
    model = Transformer(args).train()
    x, y = _batch(args)
    ref = model(x, targets=y).loss
    ref.backward()
    ref_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    with _Perturb() as mode:
        loss = model(x, targets=y).loss
        loss.backward()
    assert {"mm", "_grouped_mm", "topk"} <= mode.ops, mode.ops
    assert torch.equal(loss, ref)
    assert all(torch.allclose(p.grad, g) for p, g in zip(model.parameters(), ref_grads))
    with _Perturb(eps=1e-3):
        assert not torch.equal(model(x, targets=y).loss, ref)
    model.eval()
    cache = LatentCache(args, 2, 24)
    with _Perturb() as mode, torch.no_grad():
        dec = model(x, cache=cache)
    assert "index_put" in mode.ops or "copy_" in mode.ops
    assert torch.allclose(dec, model(x), atol=1e-5)


def test_bf16_model():
    model = Transformer(small_args(mtp_depth=1)).to(torch.bfloat16).train()
    x, y = _batch(model.args)
    out = model(x, targets=y)
    assert torch.isfinite(out.loss) and model.embed.weight.dtype == torch.bfloat16
    out.loss.backward()
    # router bias and load counters stay fp32 (HF keeps e_score_correction_bias fp32 too)
    for m in model.moe_layers():
        assert m.gate.bias.dtype == m.loads.dtype == torch.float32 and m.gate.weight.dtype == torch.bfloat16
    assert model.expert_loads().sum() == 3 * 2 * 24 * 2  # (2 main + 1 MTP MoE layers) x tokens x k, exact


def test_meta_construction_then_init():
    args = small_args(tie_embeddings=True)
    with torch.device("meta"):
        model = Transformer(args)
    assert model.embed.weight.is_meta
    model.to_empty(device="cpu")
    model.tie_weights()
    model.init_weights()
    assert model.head.weight is model.embed.weight and model.expert_loads().sum() == 0
    assert torch.isfinite(model(_batch(args)[0])).all()


def _dist_worker(rank, world, store):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        model = Transformer(small_args()).train()
        model(torch.randint(0, 512, (2 + rank, 16), generator=torch.Generator().manual_seed(rank)))
        local = model.expert_loads()
        everyone = [torch.zeros_like(local) for _ in range(world)]
        dist.all_gather(everyone, local)
        loads = model.update_expert_bias(gamma=0.01)
        assert torch.equal(loads, sum(everyone))  # the update saw the global batch
        assert loads.sum() == 2 * (2 + 3) * 16 * 2  # 2 MoE layers x all tokens of both ranks x k
        biases = torch.stack([m.gate.bias for m in model.moe_layers()])
        assert torch.allclose(biases, 0.01 * torch.sign(loads.mean(-1, keepdim=True) - loads))
        all_biases = [torch.zeros_like(biases) for _ in range(world)]
        dist.all_gather(all_biases, biases)
        assert all(torch.equal(b, biases) for b in all_biases)  # ranks stay in step
    finally:
        dist.destroy_process_group()


@pytest.mark.dist
def test_update_expert_bias_all_reduces_across_ranks(tmp_path):
    import torch.multiprocessing as mp

    # fork: the children inherit this test module (a spawned child could not import it by name)
    mp.start_processes(_dist_worker, args=(2, str(tmp_path / "store")), nprocs=2, join=True, start_method="fork")


def _fsdp_worker(rank, world, store):
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        args = small_args(mtp_depth=1, aux_loss_alpha=0.01)
        torch.manual_seed(0)
        ref = Transformer(args)
        model = Transformer(args)
        model.load_state_dict(ref.state_dict())
        for block in (*model.layers, *model.mtp):
            fully_shard(block)
        fully_shard(model)
        batches = [_batch(args, seed=r) for r in range(world)]
        x, y = batches[rank]
        model(x, targets=y).loss.backward()  # FSDP averages gradients over ranks
        sum(ref(bx, targets=by).loss for bx, by in batches).div(world).backward()
        for (name, p), q in zip(model.named_parameters(), ref.parameters()):
            assert torch.allclose(p.grad.full_tensor(), q.grad, atol=1e-6), name
        loads = model.update_expert_bias()
        assert loads.sum() == 3 * world * 2 * 24 * 2  # 3 MoE layers x all ranks' tokens x k
        model.eval()
        with torch.no_grad():  # the absorbed path reads wkv_b directly: it must be gathered by then
            cache = LatentCache(args, 2, 24)
            assert torch.isfinite(model(x, cache=cache)).all()
    finally:
        dist.destroy_process_group()


@pytest.mark.dist
def test_fsdp2_per_block_sharding(tmp_path):
    import torch.multiprocessing as mp

    mp.start_processes(_fsdp_worker, args=(2, str(tmp_path / "store")), nprocs=2, join=True, start_method="fork")
