"""Which token windows a training step reads: a pure function of (seed, global sample index), never of world size.

The train split is cut into n_samples = (n_tokens - 1) // seq_len windows; window w starts at token w * seq_len
and holds seq_len + 1 tokens (inputs = the first seq_len, targets = the last seq_len), so every token but the
first (and a tail shorter than seq_len) is a target exactly once per epoch. Global sample g belongs to epoch e = g // n_samples and reads window
perm_e[g % n_samples], where perm_e is a permutation drawn by numpy's PCG64 from SeedSequence([seed, e]).

Step s's global batch of B samples is g in [s*B, (s+1)*B); rank r of W takes g = s*B + r, s*B + r + W, ...
The whole sampler state is the next global sample index, so a run resumed on another number of ranks reads
the same samples in the same order.
"""

import numpy as np
import torch

from .errors import DataError


def _windows(tokens: np.ndarray, starts: np.ndarray, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    # starts: [n] window starts -> x, y: [n, seq_len] int64
    idx = starts[:, None] + np.arange(seq_len + 1)  # [n, seq_len + 1]
    w = torch.from_numpy(np.asarray(tokens[idx]).astype(np.int64))
    return w[:, :-1].contiguous(), w[:, 1:].contiguous()  # contiguous: callers may .view(-1) the targets


class GlobalSampler:
    """Deterministic, world-size-independent batches of windows from `tokens` (a 1-D token array or memmap)."""

    def __init__(self, tokens: np.ndarray, seq_len: int, seed: int, index: int = 0):
        if seq_len < 1:
            raise ValueError(f"seq_len must be >= 1, got {seq_len}")
        self.n_samples = (len(tokens) - 1) // seq_len
        if self.n_samples < 1:
            raise DataError(f"train split has {len(tokens)} tokens, fewer than seq_len + 1 = {seq_len + 1}")
        self.tokens, self.seq_len, self.seed = tokens, seq_len, seed
        self._perms: dict[int, np.ndarray] = {}  # epoch -> permutation; at most two (a batch may span an epoch end)
        self.index = 0
        self.load_state_dict({"index": index})

    def permutation(self, epoch: int) -> np.ndarray:
        """The window order of `epoch`: a permutation of range(n_samples), the same on every machine."""
        if epoch not in self._perms:
            if len(self._perms) >= 2:
                self._perms.pop(min(self._perms))
            rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, epoch])))
            self._perms[epoch] = rng.permutation(self.n_samples)
        return self._perms[epoch]

    def sample_at(self, global_index: int) -> int:
        """Token offset where global sample `global_index` starts."""
        epoch, pos = divmod(global_index, self.n_samples)
        return int(self.permutation(epoch)[pos]) * self.seq_len

    @property
    def epoch(self) -> int:
        """Epoch of the next sample (0-based)."""
        return self.index // self.n_samples

    def batch_indices(self, global_batch_size: int, rank: int = 0, world_size: int = 1) -> list[int]:
        """Global sample indices that `rank` reads in the next step, in row order."""
        if global_batch_size % world_size:
            raise ValueError(f"global batch size {global_batch_size} is not divisible by world size {world_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        return list(range(self.index + rank, self.index + global_batch_size, world_size))

    def next_batch(
        self, global_batch_size: int, rank: int = 0, world_size: int = 1
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's share of the next global batch: x, y int64 [global_batch_size // world_size, seq_len].

        Advances the index by the global batch size on every rank, so all ranks stay at the same index.
        """
        indices = self.batch_indices(global_batch_size, rank, world_size)
        starts = np.array([self.sample_at(g) for g in indices], dtype=np.int64)
        self.index += global_batch_size
        return _windows(self.tokens, starts, self.seq_len)

    def skip(self, n_samples: int) -> None:
        """Move past `n_samples` global samples without reading them (e.g. to step over a bad batch)."""
        if n_samples < 0:
            raise ValueError(f"cannot skip a negative number of samples ({n_samples})")
        self.index += n_samples

    def state_dict(self) -> dict[str, int]:
        """{"index": next global sample index}: all the sampler needs to resume on any world size."""
        return {"index": self.index}

    def load_state_dict(self, state: dict[str, int]) -> None:
        index = state.get("index") if isinstance(state, dict) else None
        if isinstance(index, bool) or not isinstance(index, int | np.integer) or index < 0:
            raise ValueError(f"sampler state needs a non-negative integer 'index', got {state!r}")
        self.index = int(index)


def val_batches(
    tokens: np.ndarray, n_batches: int, batch_size: int, seq_len: int, rank: int = 0, world_size: int = 1
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Fixed held-out batches: n_batches pairs x, y int64 [batch_size // world_size, seq_len].

    The n_batches * batch_size windows are spread evenly over the split's (len - 1) // seq_len windows (repeating
    windows when the split is small), in order; rank r takes rows r, r + W, ... of every batch, so the union over
    ranks is the same for every world size.
    """
    n_windows = (len(tokens) - 1) // seq_len
    if n_windows < 1:
        raise DataError(f"validation split has {len(tokens)} tokens, fewer than seq_len + 1 = {seq_len + 1}; "
                        "raise val_fraction")
    if batch_size % world_size:
        raise ValueError(f"batch size {batch_size} is not divisible by world size {world_size}")
    need = n_batches * batch_size
    if need == 0:
        return []
    starts = (np.arange(need, dtype=np.int64) * n_windows // need) * seq_len  # [need]
    starts = starts.reshape(n_batches, batch_size)[:, rank::world_size]
    return [_windows(tokens, row, seq_len) for row in starts]
