"""Data-parallel replicas must hold the same weights: a bit-level checksum per rank, compared across ranks.

Under DDP every rank applies the same averaged gradients to the same weights, so the copies stay bit-identical
unless something corrupts one of them (a flipped bit in one rank's all_reduce result, optimizer step or memory).
Losses and gradient norms are all-reduced, so they cannot show it: the replicas just drift apart. Megatron-LM
compares weight hashes across data-parallel replicas for the same reason. FSDP holds shards, not replicas.
"""

from __future__ import annotations

from collections import Counter

import torch
import torch.distributed as dist

from turnout.backend import Backend
from turnout.train.events import EventLog
from turnout.train.health import TargetUntrusted, TrustPolicy
from turnout.train.step import bit_sum


def odd_ranks(checksums: list[int]) -> list[int]:
    """Ranks whose checksum differs from the majority's; every rank when no checksum has a strict majority
    (two replicas that disagree: either may be the corrupted one)."""
    value, n = Counter(checksums).most_common(1)[0]
    if n == len(checksums):
        return []
    if 2 * n <= len(checksums):
        return list(range(len(checksums)))
    return [r for r, c in enumerate(checksums) if c != value]


class ReplicaCheck:
    """Compares the ranks' weight checksums every `interval` steps and before each checkpoint (so a checkpoint
    only ever holds weights every replica agreed on); a divergence is a hardware fault for the trust policy."""

    def __init__(self, params: list[torch.Tensor], backend: Backend, world: int, interval: int, events: EventLog,
                 policy: TrustPolicy):
        self.params, self.backend, self.world, self.interval = params, backend, world, interval
        self.events, self.policy = events, policy
        self.agreed_at = -1  # the last step whose check passed

    def due(self, step: int) -> bool:
        return step % self.interval == 0 and step != self.agreed_at

    def checksums(self) -> list[int]:
        """Every rank's weight checksum, in rank order (a collective: all ranks call it together)."""
        with self.backend.compute():
            mine = bit_sum(self.params, self.backend.device())
        out = torch.zeros(self.world, dtype=torch.int64, device=mine.device)
        (getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor)(out, mine)
        return [int(v) for v in out.tolist()]

    def diverged(self, step: int) -> bool:
        """Check now. A divergence is recorded as an `sdc` event naming the odd ranks and counted (raises
        TargetUntrusted past the policy's limit); the caller then restores the replicas from a checkpoint."""
        sums = self.checksums()
        odd = odd_ranks(sums)
        if not odd:
            self.agreed_at = step
            return False
        who = (f"rank{'s' if len(odd) > 1 else ''} {', '.join(map(str, odd))} hold{'s' if len(odd) == 1 else ''} "
               f"weights the others do not" if len(odd) < self.world else
               f"no majority among the {self.world} replicas")
        self.events.emit("sdc", step, f"data-parallel replicas diverged after step {step}: {who} (weight checksums "
                         f"{', '.join(f'{s & 0xFFFFFFFF:08x}' for s in sums)})", classification="replica", ranks=odd,
                         checksums=sums)
        reason = self.policy.fault(step)
        if reason:
            raise TargetUntrusted(reason, "sdc")
        return True
