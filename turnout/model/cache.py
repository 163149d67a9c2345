"""The MLA inference cache: per layer, only the normalised latent c_kv and the shared rotated k_pe of each token.

Layout: one preallocated `kv [n_layers, max_batch, max_seq, kv_lora_rank + qk_rope_head_dim]`, each token's
[c_kv | k_pe] side by side, so attention reads one key tensor per layer. A forward call names the cache rows it uses
(`slots`, default rows 0..B-1) and where each row's new tokens start (`start_pos`, an int or one position per row);
rows may be at different lengths, which is what continuous batching needs. Entries past a row's position are masked
out, so padding tokens written past a row's real length are harmless: the row's next call overwrites them before any
query can see them. Slots and start positions given as Python ints cost no device round trip.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .args import ModelArgs


@dataclass
class CacheStep:
    """Where one forward call reads and writes, worked out once and shared by every layer.

    rows: cache rows [B] as a tensor, or None for the contiguous rows first..first+B-1; index: the rows as [B, 1].
    pos: positions [B, T] of the new tokens. end: keys 0..end-1 are read.
    start: set when every row starts at the same position (writes become slice copies).
    bias: [B, T, end] additive attention mask in the cache dtype: 0 where key s <= pos, -inf after.
    """

    rows: torch.Tensor | None
    first: int
    index: torch.Tensor
    pos: torch.Tensor
    end: int
    start: int | None
    bias: torch.Tensor


class LatentCache:
    """Preallocated latent cache for the main decoder blocks, plus `mtp_layers` MTP blocks (speculative drafting)."""

    def __init__(self, args: ModelArgs, max_batch: int, max_seq: int, *, device=None, dtype=torch.float32,
                 mtp_layers: int = 0):
        if max_seq > args.max_seq_len:
            raise ValueError(f"max_seq={max_seq} exceeds the model's max_seq_len={args.max_seq_len}")
        if not 0 <= mtp_layers <= args.mtp_depth:
            raise ValueError(f"mtp_layers={mtp_layers} must be in [0, mtp_depth={args.mtp_depth}]")
        self.max_batch, self.max_seq, self.n_layers = max_batch, max_seq, args.n_layers + mtp_layers
        self.kv = torch.zeros(self.n_layers, max_batch, max_seq, args.kv_lora_rank + args.qk_rope_head_dim,
                              device=device, dtype=dtype)

    @property
    def bytes_per_token(self) -> int:
        """(kv_lora_rank + qk_rope_head_dim) x cached layers x dtype size: 70272 for V3's 61 layers in bf16 (vs
        4.6 MB for full K/V); an MTP layer kept for drafting adds one layer's worth."""
        return self.kv.shape[-1] * self.n_layers * self.kv.element_size()

    def reset(self):
        self.kv.zero_()

    def step(self, batch: int, seq: int, start_pos: int | Sequence[int] | torch.Tensor = 0,
             slots: Sequence[int] | torch.Tensor | None = None) -> CacheStep:
        """Positions, rows and the attention mask for a call with `batch` rows of `seq` new tokens each."""
        device = self.kv.device
        first, rows = 0, None
        if slots is not None:
            if isinstance(slots, torch.Tensor):
                if slots.shape != (batch,):
                    raise ValueError(f"slots has shape {tuple(slots.shape)}, expected ({batch},)")
                rows = slots.to(device=device, dtype=torch.long)
            else:
                slots = [int(s) for s in slots]
                if len(slots) != batch:
                    raise ValueError(f"slots has {len(slots)} entries, expected {batch}")
                if not all(0 <= s < self.max_batch for s in slots):
                    raise ValueError(f"slots {slots} must lie in [0, {self.max_batch})")
                if slots == list(range(slots[0], slots[0] + batch)):
                    first = slots[0]  # contiguous rows: views, no gather
                else:
                    rows = torch.tensor(slots, device=device)
        elif batch > self.max_batch:
            raise ValueError(f"batch {batch} exceeds the cache's max_batch={self.max_batch}")
        offs = torch.arange(seq, device=device)
        if isinstance(start_pos, int):
            start, end = start_pos, start_pos + seq
            pos = (offs + start_pos).unsqueeze(0).expand(batch, seq)
        else:
            if isinstance(start_pos, torch.Tensor):
                starts = start_pos.to(device=device, dtype=torch.long).reshape(-1)
                top = int(starts.max()) if starts.numel() else 0
            else:
                start_list = [int(s) for s in start_pos]
                starts, top = torch.tensor(start_list, device=device), max(start_list, default=0)
            if starts.shape != (batch,):
                raise ValueError(f"start_pos has shape {tuple(starts.shape)}, expected ({batch},) or an int")
            pos = starts.unsqueeze(1) + offs
            start, end = None, top + seq
        if end > self.max_seq:
            raise ValueError(f"positions up to {end} exceed the cache's max_seq={self.max_seq}")
        index = (rows if rows is not None else torch.arange(first, first + batch, device=device)).unsqueeze(1)
        keys = torch.arange(end, device=device)
        bias = torch.zeros(batch, seq, end, device=device, dtype=self.kv.dtype)
        bias.masked_fill_(keys > pos.unsqueeze(-1), float("-inf"))
        return CacheStep(rows=rows, first=first, index=index, pos=pos, end=end, start=start, bias=bias)

    def update(self, layer: int, latent: torch.Tensor, step: CacheStep) -> torch.Tensor:
        """Write latent [B, T, kv_lora_rank + rope] ([c_kv | k_pe]); return this call's keys [B, end, same]."""
        kv = self.kv[layer]
        B = latent.shape[0]
        latent = latent.detach().to(kv.dtype)
        if step.rows is None and step.start is not None:
            kv[step.first:step.first + B, step.start:step.end] = latent
        else:
            kv[step.index, step.pos] = latent
        if step.rows is None:
            return kv[step.first:step.first + B, :step.end]  # a view
        return kv[step.rows, :step.end]
