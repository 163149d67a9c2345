"""Transformer: embedding, decoder blocks, final norm and head, plus MTP modules and the training losses.

`python -m turnout.model` builds the `debug` preset and prints shapes (a smoke test).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from .args import KERNEL_FIELDS, ModelArgs
from .block import Block
from .cache import LatentCache
from .loss import Head
from .mla import MLA
from .moe import Experts, Gate, MoE
from .mtp import MTPLayer, mtp_inputs
from .norm_rope import RMSNorm, RotaryEmbedding


@dataclass
class ModelOutput:
    """Result of `model(tokens, targets=...)`: loss = ce + mtp_loss_weight * mtp + balance."""

    loss: torch.Tensor
    ce: torch.Tensor  # next-token cross-entropy, mean over non-ignored targets
    mtp: torch.Tensor  # mean over the D depths of each depth's cross-entropy (0 when mtp_depth = 0)
    balance: torch.Tensor  # sequence-wise balance loss, alpha included, summed over MoE layers (0 when off)
    logits: torch.Tensor | None = None  # [B, T, vocab] when return_logits=True


class Transformer(nn.Module):
    """DeepSeek-V3 decoder. Blocks live in `self.layers` (an nn.ModuleList, one FSDP unit each), MTP in `self.mtp`.

    Parameters are created in the default dtype (fp32 masters); `model.to(dtype)` works. Construct under
    `torch.device("meta")` and call `init_weights()` after materialising (`to_empty`) for sharded init.
    """

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args.check()
        self.embed = nn.Embedding(args.vocab_size, args.dim)
        self.layers = nn.ModuleList(Block(i, args) for i in range(args.n_layers))
        self.norm = RMSNorm(args.dim, args.norm_eps)
        self.head = Head(args.dim, args.vocab_size, args.ignore_index, args.loss_impl)
        self.tie_weights()
        self.mtp = nn.ModuleList(MTPLayer(args.n_layers + k, args) for k in range(args.mtp_depth))
        self.rope = RotaryEmbedding(args)
        if not self.embed.weight.is_meta:
            self.init_weights()
        self.set_kernels()

    def set_kernels(self, **choices) -> Transformer:
        """Switch kernel choices in place (experts_impl, attn_impl, loss_impl, norm_impl, weight_layout; see
        ModelArgs); with no arguments, apply the args' current choices to every module.
        Values, shapes and parameter names stay the same; only how they are computed or stored changes."""
        unknown = sorted(set(choices) - set(KERNEL_FIELDS))
        if unknown:
            raise ValueError(f"not kernel choices: {', '.join(unknown)} (those are {', '.join(KERNEL_FIELDS)})")
        self.args = args = self.args.replace(**choices).check()
        for m in self.modules():
            if isinstance(m, Experts):
                m.impl = args.experts_impl if hasattr(torch, "_grouped_mm") else "loop"
            elif isinstance(m, MLA):
                m.attn_impl = args.attn_impl
            elif isinstance(m, Head):
                m.impl = args.loss_impl
            elif isinstance(m, RMSNorm):
                m.impl = args.norm_impl
        self.lay_out_weights()
        return self

    @property
    def kernels(self) -> dict[str, str]:
        """The kernel choices the model computes with (ModelArgs' KERNEL_FIELDS)."""
        return {f: getattr(self.args, f) for f in KERNEL_FIELDS}

    @property
    def architecture(self) -> str:
        """What a report calls this model: turnout's DeepSeek-V3 implementation."""
        return "turnout Transformer (DeepSeek-V3)"

    def new_cache(self, batch: int, max_seq: int, dtype: torch.dtype = torch.float32, device=None) -> LatentCache:
        """An empty latent KV cache for `batch` sequences of up to `max_seq` tokens."""
        return LatentCache(self.args, batch, max_seq, device=device, dtype=dtype)

    @torch.no_grad()
    def lay_out_weights(self):
        """Store every matmul weight as args.weight_layout says (the tensors' values and shapes do not change)."""
        in_out = self.args.weight_layout == "in_out"
        for m in self.modules():
            names = ("weight",) if isinstance(m, nn.Linear) else ("w13", "w2") if isinstance(m, Experts) else ()
            for name in names:
                p = getattr(m, name)
                if p.is_meta or p.dim() < 2:
                    continue
                p.data = p.data.mT.contiguous().mT if in_out else p.data.contiguous()

    def tie_weights(self):
        """Share embed.weight as head.weight when args.tie_embeddings (call again after `to_empty`)."""
        if self.args.tie_embeddings:
            self.head.weight = self.embed.weight

    @torch.no_grad()
    def init_weights(self, std: float | None = None):
        """Normal(0, std) for every matrix and embedding, ones for norms, zeros for the router bias and loads."""
        std = self.args.init_std if std is None else std
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=std)
            elif isinstance(m, RMSNorm):
                nn.init.ones_(m.weight)
            elif isinstance(m, Gate):
                nn.init.normal_(m.weight, std=std)
                m.bias.zero_()
            elif isinstance(m, Experts):
                nn.init.normal_(m.w13, std=std)
                nn.init.normal_(m.w2, std=std)
            elif isinstance(m, MoE):
                m.loads.zero_()

    def forward(self, tokens: torch.Tensor, targets: torch.Tensor | None = None, *,
                cache: LatentCache | None = None, start_pos: int | Sequence[int] | torch.Tensor = 0,
                slots: Sequence[int] | torch.Tensor | None = None, return_logits: bool = False,
                return_hidden: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor] | ModelOutput:
        """tokens [B, T] -> logits [B, T, vocab]; with targets [B, T] (ignore_index marks no-loss) -> ModelOutput.

        With `cache`, runs the absorbed attention path on the latent cache: the tokens of row b sit at positions
        start_pos (+ t), where start_pos is an int or one position per row (a list of ints, or a LongTensor [B]),
        and use cache row slots[b] (default b); lists of ints cost no device round trip.
        The cache path is for inference; it does not compute losses. `return_hidden` (without targets) also
        returns the final-norm hidden states [B, T, dim], the MTP drafter's input (`draft`).
        """
        B, T = tokens.shape
        if cache is not None and targets is not None:
            raise ValueError("targets with a cache is not supported; the cache path is for inference")
        if cache is None and (slots is not None or not isinstance(start_pos, int) or start_pos != 0):
            raise ValueError("start_pos and slots place tokens in a cache; pass cache=")
        h = self.embed(tokens)
        step = None
        if cache is None:
            positions = torch.arange(T, device=tokens.device)
        else:
            step = cache.step(B, T, start_pos, slots)
            positions = step.pos
        cos, sin = self.rope(positions, h.dtype)
        balance = []
        for layer in self.layers:
            h, bal = layer(h, cos, sin, cache, step)
            if bal is not None:
                balance.append(bal)
        h = self.norm(h)
        if targets is None:
            return (self.head(h), h) if return_hidden else self.head(h)

        logits = self.head(h) if return_logits else None
        ce = self.head(h, targets)
        mtp = []
        for k, layer in enumerate(self.mtp, start=1):
            shifted, tgt = mtp_inputs(tokens, targets, k, self.args.ignore_index)
            h, out, bal = layer(h, self.embed(shifted), cos, sin)
            mtp.append(self.head(out, tgt))
            if bal is not None:
                balance.append(bal)
        zero = ce.new_zeros(())
        mtp = torch.stack(mtp).mean() if mtp else zero
        balance = torch.stack(balance).sum() if balance else zero
        loss = ce + self.args.mtp_loss_weight * mtp + balance
        return ModelOutput(loss=loss, ce=ce, mtp=mtp, balance=balance, logits=logits)

    def draft(self, hidden: torch.Tensor, next_tokens: torch.Tensor, *, cache: LatentCache,
              start_pos: int | Sequence[int] | torch.Tensor = 0,
              slots: Sequence[int] | torch.Tensor | None = None, last: torch.Tensor | None = None) -> torch.Tensor:
        """Speculative drafting with the first MTP module on its own cache layer (a LatentCache made with
        mtp_layers >= 1): hidden [B, T, dim] from `forward(..., return_hidden=True)` at positions start_pos (+ t)
        and the tokens that followed them, next_tokens [B, T] -> logits [B, T, vocab] for one token further.
        Positions must be fed in order, as for `forward`. `last` [B] (indices into T) keeps only those positions'
        logits ([B, vocab]): the head, a vocab-wide matmul, then runs once per row."""
        if not self.mtp:
            raise ValueError("this model has no MTP module (mtp_depth=0) to draft with")
        if cache.n_layers <= self.args.n_layers:
            raise ValueError("the cache has no MTP layer; make it with LatentCache(..., mtp_layers=1)")
        B, T = next_tokens.shape
        step = cache.step(B, T, start_pos, slots)
        cos, sin = self.rope(step.pos, hidden.dtype)
        _, out, _ = self.mtp[0](hidden, self.embed(next_tokens), cos, sin, cache, step)
        if last is not None:
            out = out[torch.arange(B, device=out.device), last]  # [B, dim]
        return self.head(out)

    # --- aux-loss-free load balancing -------------------------------------------------------------------------
    def moe_layers(self) -> list[MoE]:
        """The MoE ffns: main blocks in order, then MTP blocks."""
        return [b.ffn for b in (*self.layers, *self.mtp) if isinstance(b.ffn, MoE)]

    def expert_loads(self) -> torch.Tensor:
        """[n_moe_layers, n_routed_experts] tokens routed per expert (this rank) since the last reset."""
        moes = self.moe_layers()
        if not moes:
            return torch.zeros(0, self.args.n_routed_experts)
        return torch.stack([m.loads for m in moes]).clone()

    @torch.no_grad()
    def reset_expert_loads(self):
        for m in self.moe_layers():
            m.loads.zero_()

    @torch.no_grad()
    def update_expert_bias(self, gamma: float | None = None, group=None) -> torch.Tensor:
        """After an optimiser step: sum loads over ranks (when a process group is up), move each router bias by
        gamma * sign(mean_load - load) (gamma defaults to args.bias_update_speed; 0 only measures), reset the
        counters and return the global loads [n_moe_layers, E]. Every rank must call it (it is a collective).
        """
        gamma = self.args.bias_update_speed if gamma is None else gamma
        moes = self.moe_layers()
        if not moes:
            return torch.zeros(0, self.args.n_routed_experts)
        loads = torch.stack([m.loads for m in moes])
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(loads, group=group)
        if gamma:
            for m, load in zip(moes, loads):
                m.update_bias(load, gamma)
        self.reset_expert_loads()
        return loads
