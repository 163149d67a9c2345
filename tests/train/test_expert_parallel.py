"""Expert parallelism, the dispatch: a DeepSeekMoE layer with its routed experts split over 2 and 4 gloo ranks
computes what the whole layer computes on each rank's own tokens (uneven token counts, so uneven all_to_all
splits), and its gradients are those of the sum of the ranks' losses: inputs and local experts directly, the
replicated gate and shared experts once summed over ranks."""

from __future__ import annotations

import copy

import pytest
import torch

from turnout.model import ModelArgs
from turnout.model.moe import MoE
from turnout.train.expert_parallel import ExpertParallelExperts, expert_parameters, shard_experts


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    """fp32 reduction-order tolerance: the same products, their rows summed in another order (a weight gradient
    sums both ranks' rows in one product here, two accumulated ones in the reference): 1e-5 of the largest value."""
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * float(b.detach().abs().max()))


def _layer(impl: str) -> MoE:
    args = ModelArgs.preset("debug", experts_impl=impl)
    torch.manual_seed(0)
    moe = MoE(args)
    for p in moe.parameters():
        torch.nn.init.normal_(p, std=0.05)
    moe.gate.bias.normal_(0, 0.01)  # biased selection as after a few bias updates
    return moe


def _worker(rank, world, store, impl):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        moe = _layer(impl)
        ref = copy.deepcopy(moe)
        inputs = [torch.randn(1, 5 + 7 * r, moe.gate.weight.shape[1], generator=torch.Generator().manual_seed(r))
                  for r in range(world)]
        probes = [torch.randn(x.shape, generator=torch.Generator().manual_seed(100 + r)) for r, x in enumerate(inputs)]
        assert len(shard_experts(moe)) == 1
        assert isinstance(moe.experts, ExpertParallelExperts) and moe.experts.n_experts == 8 // world
        x = inputs[rank].clone().requires_grad_()
        y, _ = moe(x)
        (y * probes[rank]).sum().backward()

        xs = [t.clone().requires_grad_() for t in inputs]
        outs = [ref(t)[0] for t in xs]
        sum((o * p).sum() for o, p in zip(outs, probes)).backward()

        close(y, outs[rank].detach())
        close(x.grad, xs[rank].grad)
        first, n = moe.experts.first, moe.experts.n_experts
        close(moe.experts.w13.grad, ref.experts.w13.grad[first:first + n])
        close(moe.experts.w2.grad, ref.experts.w2.grad[first:first + n])
        assert expert_parameters(moe) == [moe.experts.w13, moe.experts.w2]
        for name in ("gate.weight", "shared_experts.w1.weight", "shared_experts.w2.weight"):
            g = dict(moe.named_parameters())[name].grad.clone()
            dist.all_reduce(g)  # what data parallelism does with the replicated parameters (before its mean)
            close(g, dict(ref.named_parameters())[name].grad)
        # the layer's expert loads count this rank's tokens; summed over ranks they are the whole batch's
        loads = moe.loads.clone()
        dist.all_reduce(loads)
        assert torch.equal(loads, ref.loads)
    finally:
        dist.destroy_process_group()


@pytest.mark.dist
@pytest.mark.parametrize("world", [2, 4])
@pytest.mark.parametrize("impl", ["grouped", "loop"])
def test_split_experts_compute_the_whole_layer(tmp_path, world, impl):
    import torch.multiprocessing as mp

    mp.start_processes(_worker, args=(world, str(tmp_path / "store"), impl), nprocs=world, join=True,
                       start_method="fork")


def test_one_rank_holds_every_expert_and_computes_the_same_layer(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        moe = _layer("loop")
        shard_experts(moe)  # one rank: every expert local, the same layer
        assert moe.experts.n_experts == 8
        x = torch.randn(1, 6, moe.gate.weight.shape[1])
        close(moe(x)[0], _layer("loop")(x)[0])
    finally:
        dist.destroy_process_group()


def _check_worker(rank, world, store, phase):
    import torch.distributed as dist

    from turnout.backend.checksums import StepChecks
    from turnout.train import expert_parallel

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        moe = _layer("grouped")
        shard_experts(moe)
        x = torch.randn(1, 9 + 4 * rank, moe.gate.weight.shape[1], generator=torch.Generator().manual_seed(rank))
        probe = torch.randn(x.shape, generator=torch.Generator().manual_seed(50 + rank))
        checks = StepChecks()
        moe.experts.checks = lambda: checks
        clean, _ = moe(x.clone().requires_grad_())
        (clean * probe).sum().backward()
        clean_grad = moe.experts.w13.grad.clone()
        moe.zero_grad()
        assert len(checks) == 4 and checks.collect() == []  # both exchanges, both ways, checked and clean
        # a bit flipped in transit: the rows rank 1 receives in the first forward exchange (the dispatch), or the
        # gradients it receives in the first backward one (the combine's reverse)
        real, calls = expert_parallel.exchange, []
        hit = 1 if phase == "forward" else 3

        def corrupt(rows, out_splits, in_splits, group):
            got = real(rows, out_splits, in_splits, group)
            calls.append(1)
            if rank == 1 and len(calls) == hit and got.numel():
                got.view(torch.int32).view(-1)[3] ^= 1 << 27  # an exponent bit
            return got

        expert_parallel.exchange = corrupt
        checks = StepChecks()
        bad, _ = moe(x.clone().requires_grad_())
        (bad * probe).sum().backward()
        found = checks.collect()
        if rank == 1:
            assert [(m.op, m.phase) for m in found] == [("c10d::all_to_all_single", phase)], found
        else:  # the corrupted rows came from here and what returns was computed from them: the verdict is shared
            assert found == []
        changed = torch.tensor([float(not torch.equal(bad, clean) or not torch.equal(moe.experts.w13.grad,
                                                                                   clean_grad))])
        dist.all_reduce(changed)
        assert changed.item() >= 1  # the flip reached some rank's output or gradient
    finally:
        dist.destroy_process_group()


@pytest.mark.dist
@pytest.mark.parametrize("phase", ["forward", "backward"])
def test_a_row_corrupted_in_the_exchange_fails_the_receivers_check(tmp_path, phase):
    import torch.multiprocessing as mp

    mp.start_processes(_check_worker, args=(2, str(tmp_path / "store"), phase), nprocs=2, join=True,
                       start_method="fork")
