"""torch.distributed plumbing: join the process group torchrun describes, and wrap the model (DDP or FSDP2).

turnout never builds its own distributed engine: ranks come from torchrun's environment, collectives from the
target's process-group backend (gloo on CPU and sim targets, nccl on cuda, hccl on npu, xccl on xpu).
"""

from __future__ import annotations

import datetime
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

from turnout.backend import Backend


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(backend: Backend, timeout_s: float = 600.0) -> DistInfo:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); a single process needs none."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if backend.device_type != "cpu":
        backend.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group(backend.collective, timeout=datetime.timedelta(seconds=timeout_s))
    return DistInfo(rank, world, local)


LEAVE_WAIT_S = 120  # how long a rank waits for the others before leaving the group anyway


def shutdown_distributed() -> None:
    """Leave the process group, after waiting (bounded) for every rank to get here. torchrun ends the ranks still
    running as soon as one exits with an error code, so a rank that left first would cut rank 0 off while it
    writes the report and says why the run stopped. A peer that died or hangs costs at most LEAVE_WAIT_S."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    if dist.get_world_size() > 1:
        try:
            dist.barrier(async_op=True).wait(timeout=datetime.timedelta(seconds=LEAVE_WAIT_S))
        except Exception:  # noqa: BLE001 -- a broken group is exactly when not to wait; leave it
            pass
    dist.destroy_process_group()


def wrap_model(model: torch.nn.Module, parallel: str, info: DistInfo, backend: Backend,
               ignore: Sequence[torch.nn.Parameter] = ()) -> torch.nn.Module:
    """DDP, or FSDP2 with `fully_shard` on every decoder block and the root; unchanged for one process. `ignore`:
    parameters left out of data parallelism (expert-parallel splits, whose gradients the caller reduces)."""
    if info.world_size <= 1:
        return model
    if parallel == "fsdp":
        from torch.distributed.fsdp import fully_shard

        ignored = set(ignore) or None
        # one FSDP unit per decoder block; MTP modules stay in the root unit because the model applies their
        # final norm outside their forward (the root's parameters are gathered for the whole forward)
        for block in model.layers:
            fully_shard(block, ignored_params=ignored)
        fully_shard(model, ignored_params=ignored)
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    if ignore:
        skip = {id(p) for p in ignore}
        DDP._set_params_and_buffers_to_ignore_for_model(model, [n for n, p in model.named_parameters()
                                                                 if id(p) in skip])
    ids = None if backend.device_type == "cpu" else [info.local_rank]
    # experts are fused [E, ...] parameters, so every parameter takes part in every step
    return DDP(model, device_ids=ids)


def local_shard(t: torch.Tensor) -> torch.Tensor:
    """The local shard of a DTensor (FSDP2), or the tensor itself."""
    return t.to_local() if hasattr(t, "to_local") else t


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model under a DDP wrapper (FSDP2 modifies the module in place, so it is its own inner model)."""
    return getattr(model, "module", model)


def all_reduce_mean(values: torch.Tensor) -> torch.Tensor:
    """Average a small tensor over ranks (identity for one process)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        values /= dist.get_world_size()
    return values


def all_max(value: float, device: torch.device) -> float:
    """The largest of every rank's `value` (inf and NaN as they are: NaN wins); `value` itself in one process."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return value
    t = torch.tensor([math.inf if math.isnan(value) else value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t)


def all_gather_json(items: list, device: torch.device) -> list:
    """Every rank's list of JSON values, concatenated in rank order (as UTF-8 bytes in tensors: no pickling); the
    list itself in one process."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return items
    world = dist.get_world_size()
    data = torch.tensor(list(json.dumps(items).encode()), dtype=torch.uint8, device=device)
    sizes = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([data.numel()], dtype=torch.int64, device=device))
    longest = max(int(s) for s in sizes)
    parts = [torch.zeros(longest, dtype=torch.uint8, device=device) for _ in range(world)]
    dist.all_gather(parts, torch.cat([data, data.new_zeros(longest - data.numel())]))
    return [x for p, s in zip(parts, sizes) for x in json.loads(bytes(p[:int(s)].cpu().tolist()).decode())]
