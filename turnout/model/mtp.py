"""Multi-Token Prediction (paper section 2.2): D sequential modules that each predict one token further ahead.

Module k (1-based) at position i combines h^{k-1}_i with the embedding of token t_{i+k}, in HF/vLLM order:
`h'_i = eh_proj(cat[enorm(emb(t_{i+k})), hnorm(h^{k-1}_i)])`, runs its own decoder block, and predicts t_{i+k+1}
through `norm` (HF `shared_head.norm`) and the shared head. h^0 is the main model's output after its final norm;
h^k for k >= 1 is the block output before `norm`. The embedding and the head are the main model's (shared).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .args import ModelArgs
from .block import Block
from .cache import CacheStep, LatentCache
from .norm_rope import RMSNorm


class MTPLayer(Block):
    """A decoder block (layer id n_layers + k - 1, so a MoE block) with the MTP input projection and head norm."""

    def __init__(self, layer_id: int, args: ModelArgs):
        super().__init__(layer_id, args)
        self.enorm = RMSNorm(args.dim, args.norm_eps)
        self.hnorm = RMSNorm(args.dim, args.norm_eps)
        self.eh_proj = nn.Linear(2 * args.dim, args.dim, bias=False)
        self.norm = RMSNorm(args.dim, args.norm_eps)  # HF shared_head.norm

    def forward(self, h: torch.Tensor, emb: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                cache: LatentCache | None = None,
                step: CacheStep | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """h [B, T, dim] previous depth, emb [B, T, dim] embeddings of the tokens k ahead
        -> (h^k for the next depth, norm(h^k) for the shared head, balance loss or None).
        With a cache (one that has this layer), attention runs on the latent cache as in the main blocks.

        The head norm runs here, inside this module's forward, so FSDP has its weight gathered.
        """
        x = self.eh_proj(torch.cat([self.enorm(emb), self.hnorm(h)], dim=-1))
        h, balance = super().forward(x, cos, sin, cache, step)
        return h, self.norm(h), balance


def mtp_inputs(tokens: torch.Tensor, targets: torch.Tensor, k: int, ignore_index: int):
    """Depth-k inputs and targets on the full length T: tokens t_{i+k} and targets t_{i+k+1} (= targets[i+k]).

    The last k positions have no such token: their inputs wrap around (harmless, attention is causal) and their
    targets are ignore_index.
    """
    shifted = torch.roll(tokens, -k, dims=1)
    tgt = F.pad(targets[:, k:], (0, k), value=ignore_index)
    return shifted, tgt
