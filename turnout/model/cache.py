"""The MLA inference cache: per layer, only the normalised latent c_kv and the shared rotated k_pe of each token.

Layout: `kv [n_layers, max_batch, max_seq, kv_lora_rank]` and `pe [n_layers, max_batch, max_seq, qk_rope_head_dim]`,
preallocated. A forward call names the cache rows it uses (`slots`, default rows 0..B-1) and where each row's new
tokens start (`start_pos`, an int or a per-row LongTensor [B]); rows may be at different lengths, which is what
continuous batching needs. Entries past a row's position are masked out, so padding tokens written past a row's real
length are harmless: the row's next call overwrites them before any query can see them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .args import ModelArgs


@dataclass
class CacheStep:
    """Where one forward call reads and writes: rows [B] (None: rows 0..B-1), positions [B, T], keys seen 0..end-1."""

    rows: torch.Tensor | None
    pos: torch.Tensor
    end: int
    start: int | None  # set when every row starts at the same position (contiguous slice writes)

    @property
    def mask(self) -> torch.Tensor:
        """[B, T, end] bool, True where key s is visible to the query at pos[b, t] (s <= pos)."""
        keys = torch.arange(self.end, device=self.pos.device)
        return keys.view(1, 1, -1) <= self.pos.unsqueeze(-1)


class LatentCache:
    """Preallocated latent cache for the main decoder blocks (MTP blocks are not cached)."""

    def __init__(self, args: ModelArgs, max_batch: int, max_seq: int, *, device=None, dtype=torch.float32):
        if max_seq > args.max_seq_len:
            raise ValueError(f"max_seq={max_seq} exceeds the model's max_seq_len={args.max_seq_len}")
        self.max_batch, self.max_seq, self.n_layers = max_batch, max_seq, args.n_layers
        self.kv = torch.zeros(args.n_layers, max_batch, max_seq, args.kv_lora_rank, device=device, dtype=dtype)
        self.pe = torch.zeros(args.n_layers, max_batch, max_seq, args.qk_rope_head_dim, device=device, dtype=dtype)

    @property
    def bytes_per_token(self) -> int:
        """(kv_lora_rank + qk_rope_head_dim) x layers x dtype size: 70272 for V3 in bf16 (vs 4.6 MB for full K/V)."""
        return (self.kv.shape[-1] + self.pe.shape[-1]) * self.n_layers * self.kv.element_size()

    def reset(self):
        self.kv.zero_()
        self.pe.zero_()

    def step(self, batch: int, seq: int, start_pos: int | torch.Tensor = 0,
             slots: torch.Tensor | None = None) -> CacheStep:
        """Positions and rows for a call with `batch` rows of `seq` new tokens each."""
        device = self.kv.device
        if slots is not None:
            slots = torch.as_tensor(slots, device=device, dtype=torch.long)
            if slots.shape != (batch,):
                raise ValueError(f"slots has shape {tuple(slots.shape)}, expected ({batch},)")
        elif batch > self.max_batch:
            raise ValueError(f"batch {batch} exceeds the cache's max_batch={self.max_batch}")
        offs = torch.arange(seq, device=device)
        if isinstance(start_pos, int):
            start, end = start_pos, start_pos + seq
            pos = (offs + start_pos).unsqueeze(0).expand(batch, seq)
        else:
            starts = torch.as_tensor(start_pos, device=device, dtype=torch.long).reshape(-1)
            if starts.shape != (batch,):
                raise ValueError(f"start_pos has shape {tuple(starts.shape)}, expected ({batch},) or an int")
            pos = starts.unsqueeze(1) + offs
            start, end = None, int(starts.max()) + seq
        if end > self.max_seq:
            raise ValueError(f"positions up to {end} exceed the cache's max_seq={self.max_seq}")
        return CacheStep(rows=slots, pos=pos, end=end, start=start)

    def update(self, layer: int, c_kv: torch.Tensor, k_pe: torch.Tensor, step: CacheStep):
        """Write c_kv [B, T, kv_lora_rank] and k_pe [B, T, rope]; return this call's keys [B, end, ...] for both."""
        kv, pe = self.kv[layer], self.pe[layer]
        B, dtype = c_kv.shape[0], c_kv.dtype
        c_kv, k_pe = c_kv.detach().to(kv.dtype), k_pe.detach().to(pe.dtype)
        if step.rows is None and step.start is not None:
            kv[:B, step.start:step.end] = c_kv
            pe[:B, step.start:step.end] = k_pe
            return kv[:B, :step.end].to(dtype), pe[:B, :step.end].to(dtype)
        rows = step.rows if step.rows is not None else torch.arange(B, device=kv.device)
        kv[rows.unsqueeze(1), step.pos] = c_kv
        pe[rows.unsqueeze(1), step.pos] = k_pe
        return kv[rows, :step.end].to(dtype), pe[rows, :step.end].to(dtype)
