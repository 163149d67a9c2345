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
from turnout.train.expert_parallel import ExpertLayout
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
                 policy: TrustPolicy, split: ExpertLayout | None = None):
        self.backend, self.world, self.interval = backend, world, interval
        self.events, self.policy = events, policy
        self.agreed_at = -1  # the last step whose check passed
        # expert parallelism: the split weights are compared only among the ranks holding the same experts
        ids = {id(p) for p in split.params.values()} if split else set()
        self.params = [p for p in params if id(p) not in ids]
        self.split = [p for p in params if id(p) in ids]
        self.peers = split.replica_ranks() if split else []

    def due(self, step: int) -> bool:
        return step % self.interval == 0 and step != self.agreed_at

    def checksums(self) -> list[int]:
        """Every rank's weight checksum, in rank order (a collective: all ranks call it together); with split
        weights, the checksum of the replicated ones (see `all_checksums` for both)."""
        return [c for c, _ in self.all_checksums()]

    def all_checksums(self) -> list[tuple[int, int]]:
        """(replicated weights, split weights) checksums of every rank, in rank order (a collective)."""
        with self.backend.compute():
            mine = torch.cat([bit_sum(self.params, self.backend.device()), bit_sum(self.split, self.backend.device())])
        out = torch.zeros(self.world * 2, dtype=torch.int64, device=mine.device)
        (getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor)(out, mine)
        v = out.tolist()
        return [(int(v[2 * r]), int(v[2 * r + 1])) for r in range(self.world)]

    def odd(self, pairs: list[tuple[int, int]]) -> list[int]:
        """Ranks whose replicated weights differ from the majority's, or whose split weights differ from those of
        the other ranks holding the same experts."""
        odd = set(odd_ranks([c for c, _ in pairs]))
        for ranks in self.peers:
            if len(ranks) > 1:
                odd.update(ranks[i] for i in odd_ranks([pairs[r][1] for r in ranks]))
        return sorted(odd)

    def diverged(self, step: int) -> bool:
        """Check now. A divergence is recorded as an `sdc` event naming the odd ranks and counted (raises
        TargetUntrusted past the policy's limit); the caller then restores the replicas from a checkpoint."""
        pairs = self.all_checksums()
        sums = [c for c, _ in pairs]
        odd = self.odd(pairs)
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
