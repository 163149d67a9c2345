"""Per-request sampling parameters and the next-token choice for a batch of rows.

Each row is chosen from its own logits with its own `torch.Generator`, so a seeded request gives the same tokens
whatever else shares its decode step. Greedy rows (temperature 0, or top_k 1) are one batched argmax; sampled rows
apply temperature, then top-k, then top-p (nucleus) and draw with `torch.multinomial(generator=...)`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1  # what torch.Generator.manual_seed accepts


@dataclass(frozen=True)
class SamplingParams:
    """How one request decodes. temperature 0 means greedy; top_k 0 and top_p 1 mean "no cut"."""

    max_tokens: int = 16  # new tokens at most (the prompt plus these must fit the context)
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None  # None: a fresh random seed per request
    stop: tuple[str, ...] = field(default=())  # stop when the text contains one; it is trimmed from the output
    ignore_eos: bool = False  # keep going past the end-of-text token (benchmarks)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1

    def problems(self) -> list[tuple[str, str]]:
        """(param, message) for every invalid field; empty when the request can run."""
        p = []

        def is_int(v) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        if not is_int(self.max_tokens) or self.max_tokens < 1:
            p.append(("max_tokens", f"max_tokens must be an integer >= 1, got {self.max_tokens!r}"))
        if not isinstance(self.temperature, (int, float)) or isinstance(self.temperature, bool) \
                or not math.isfinite(self.temperature) or self.temperature < 0:
            p.append(("temperature", f"temperature must be a finite number >= 0, got {self.temperature!r}"))
        if not is_int(self.top_k) or self.top_k < 0:
            p.append(("top_k", f"top_k must be an integer >= 0 (0: off), got {self.top_k!r}"))
        if not isinstance(self.top_p, (int, float)) or isinstance(self.top_p, bool) \
                or not (0 < self.top_p <= 1):
            p.append(("top_p", f"top_p must be in (0, 1], got {self.top_p!r}"))
        if self.seed is not None and (not is_int(self.seed) or not SEED_MIN <= self.seed <= SEED_MAX):
            p.append(("seed", f"seed must be an integer in [{SEED_MIN}, {SEED_MAX}], got {self.seed!r}"))
        if not isinstance(self.stop, tuple) or not all(isinstance(s, str) and s for s in self.stop):
            p.append(("stop", "stop must be a list of non-empty strings"))
        return p


def make_generator(params: SamplingParams, device: torch.device) -> torch.Generator | None:
    """The request's private generator (None for greedy requests, which draw nothing)."""
    if params.greedy:
        return None
    g = torch.Generator(device=device)
    if params.seed is None:
        g.seed()  # non-deterministic
    else:
        g.manual_seed(params.seed)
    return g


def filter_logits(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """One row's logits [V] (fp32) after temperature, top-k and top-p; cut entries become -inf."""
    x = logits / params.temperature
    V = x.shape[-1]
    if 0 < params.top_k < V:
        kth = torch.topk(x, params.top_k).values[-1]
        x = x.masked_fill(x < kth, float("-inf"))
    if params.top_p < 1:
        vals, idx = torch.sort(x, descending=True)
        probs = torch.softmax(vals, dim=-1)
        # drop a token when the tokens above it already hold top_p of the mass (the first is always kept)
        drop = (probs.cumsum(-1) - probs) > params.top_p
        x = x.scatter(0, idx, vals.masked_fill(drop, float("-inf")))
    return x


def sample_rows(logits: torch.Tensor, params: list[SamplingParams],
                generators: list[torch.Generator | None]) -> list[int]:
    """Next token of each row of logits [B, V]; one host transfer for the whole batch."""
    B = logits.shape[0]
    out = torch.empty(B, dtype=torch.long, device=logits.device)
    greedy = [i for i, p in enumerate(params) if p.greedy]
    if len(greedy) == B:
        return logits.argmax(-1).tolist()
    if greedy:
        gi = torch.tensor(greedy, device=logits.device)
        out[gi] = logits[gi].argmax(-1)
    for i, p in enumerate(params):
        if not p.greedy:
            probs = torch.softmax(filter_logits(logits[i].float(), p), dim=-1)
            out[i] = torch.multinomial(probs, 1, generator=generators[i])[0]
    return out.tolist()


def verify_drafts(logits: torch.Tensor, drafts: list[int], params: list[SamplingParams],
                  generators: list[torch.Generator | None]) -> list[list[int]]:
    """Speculative decoding with one drafted token per row: logits [B, 2, V] of the verify step (position 0 scored
    the draft, position 1 follows it) -> the tokens each row emits, one or two.

    Greedy rows accept the draft when it is the argmax, then add the argmax after it. Sampled rows accept it with
    probability p(draft) under the row's filtered distribution and otherwise draw from that distribution with the
    draft removed, renormalised: the drafter is deterministic, so this is the standard acceptance rule, and every
    emitted token has exactly the distribution plain sampling would give it.
    """
    if all(p.greedy for p in params):  # one host transfer for the batch
        best = logits.argmax(-1).tolist()
        return [[b0, b1] if b0 == d else [b0] for (b0, b1), d in zip(best, drafts)]
    out = []
    for i, (p, d) in enumerate(zip(params, drafts)):
        if p.greedy:
            b0, b1 = logits[i].argmax(-1).tolist()
            out.append([b0, b1] if b0 == d else [b0])
            continue
        g = generators[i]
        probs = torch.softmax(filter_logits(logits[i, 0].float(), p), dim=-1)
        u = torch.rand((), generator=g, device=probs.device)
        if bool(u < probs[d]):
            nxt = torch.softmax(filter_logits(logits[i, 1].float(), p), dim=-1)
            out.append([d, int(torch.multinomial(nxt, 1, generator=g)[0])])
        else:
            rest = probs.clone()
            rest[d] = 0
            out.append([int(torch.multinomial(rest, 1, generator=g)[0])])  # multinomial renormalises
    return out
