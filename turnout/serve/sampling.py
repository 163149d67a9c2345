"""Per-request sampling parameters and the next-token choice for a batch of rows.

Each row is chosen from its own logits with its own `torch.Generator`, so a seeded request gives the same tokens
whatever else shares its decode step. Greedy rows (temperature 0, or top_k 1) are one batched argmax; sampled rows
apply temperature, then top-k, then top-p (nucleus) and draw with `torch.multinomial(generator=...)`.

Every temperature the API accepts is safe: the logits are shifted so the largest is 0 before they are divided, so
a small temperature sends the other tokens to -inf instead of overflowing to +inf (and NaN after softmax), and
temperatures below float32's smallest normal number (GREEDY_BELOW, about 1.2e-38), which float32 cannot divide by
exactly, decode greedily: the limit of sampling as the temperature goes to 0. A row whose logits are not finite
(a failing target) gets a SamplingError in place of its token, so it fails its own request and no other.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from turnout.serve.logprobs import MAX_LOGPROBS

# any integer is a seed: it seeds the generator modulo 2**64, which is how torch.Generator.manual_seed already
# reads the negative seeds it takes (-1 and 2**64 - 1 are the same seed), so no seed is refused for its size
SEED_MODULUS = 2**64
# below float32's smallest normal number a temperature cannot be divided by exactly (float32 rounds it to a
# subnormal or to 0): such requests decode greedily, which is where sampling tends as the temperature goes to 0
GREEDY_BELOW = torch.finfo(torch.float32).tiny


class SamplingError(RuntimeError):
    """One row could not be sampled (its logits are not finite); it stands in for that row's token."""


@dataclass(frozen=True)
class SamplingParams:
    """How one request decodes. temperature 0 (or below GREEDY_BELOW) means greedy; top_k 0 and top_p 1 mean
    "no cut"."""

    max_tokens: int = 16  # new tokens at most (the prompt plus these must fit the context); 0: score the prompt
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None  # None: a fresh random seed per request; any integer (taken modulo 2**64)
    stop: tuple[str, ...] = field(default=())  # stop when the text contains one; it is trimmed from the output
    ignore_eos: bool = False  # keep going past the end-of-text token (benchmarks)
    # log-probabilities (logprobs.py: the raw model distribution): None: none; N: each generated token's, with
    # the N likeliest tokens at its position; prompt_logprobs the same for every prompt token
    logprobs: int | None = None
    prompt_logprobs: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW or self.top_k == 1

    def problems(self) -> list[tuple[str, str]]:
        """(param, message) for every invalid field; empty when the request can run."""
        p = []

        def is_int(v) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        if not is_int(self.max_tokens) or self.max_tokens < 0:
            p.append(("max_tokens", f"max_tokens must be an integer >= 0, got {self.max_tokens!r}"))
        if not isinstance(self.temperature, (int, float)) or isinstance(self.temperature, bool) \
                or not math.isfinite(self.temperature) or self.temperature < 0:
            p.append(("temperature", f"temperature must be a finite number >= 0, got {self.temperature!r}"))
        if not is_int(self.top_k) or self.top_k < 0:
            p.append(("top_k", f"top_k must be an integer >= 0 (0: off), got {self.top_k!r}"))
        if not isinstance(self.top_p, (int, float)) or isinstance(self.top_p, bool) \
                or not (0 < self.top_p <= 1):
            p.append(("top_p", f"top_p must be in (0, 1], got {self.top_p!r}"))
        if self.seed is not None and not is_int(self.seed):
            p.append(("seed", f"seed must be an integer, got {self.seed!r}"))
        for name in ("logprobs", "prompt_logprobs"):
            v = getattr(self, name)
            if v is not None and (not is_int(v) or not 0 <= v <= MAX_LOGPROBS):
                p.append((name, f"{name} must be null or an integer in [0, {MAX_LOGPROBS}], got {v!r}"))
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
        g.manual_seed(params.seed % SEED_MODULUS)
    return g


def filter_logits(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """One row's finite logits [V] after temperature, top-k and top-p, as float32 shifted so the largest is 0
    (softmax is unchanged by the shift); cut entries become -inf.

    Shifting first keeps every value <= 0, so dividing by a temperature of at least GREEDY_BELOW cannot overflow
    to +inf: far-below-the-top tokens go to -inf and the top token stays at exactly 0."""
    x = logits.float()
    # greedy rows (temperature below GREEDY_BELOW) are never filtered; the floor keeps the division safe anyway
    x = (x - x.max()) / max(params.temperature, GREEDY_BELOW)
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


def _not_finite() -> SamplingError:
    return SamplingError("the target produced non-finite logits (nan or inf) for this request")


def _finite_rows(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows [B] whose logits are all finite, logits with every other row zeroed). Sampling the zeroed rows
    keeps bad values away from multinomial, which on a GPU fails by a device-side assert that breaks the whole
    CUDA context instead of raising for one row; their draws are discarded once the mask reaches the host with
    the batch's tokens (no extra host round trip)."""
    ok = torch.isfinite(logits).all(-1)
    return ok, torch.where(ok.unsqueeze(-1), logits, torch.zeros((), dtype=logits.dtype, device=logits.device))


def sample_rows(logits: torch.Tensor, params: list[SamplingParams],
                generators: list[torch.Generator | None]) -> list[int | SamplingError]:
    """Next token of each row of logits [B, V]; one host transfer for the whole batch. A row that cannot be
    sampled gets a SamplingError in its place (returned, never raised), so it fails its own request only."""
    ok, logits = _finite_rows(logits)
    out = logits.argmax(-1)
    errors: dict[int, SamplingError] = {}
    for i, p in enumerate(params):
        if not p.greedy:
            try:
                probs = torch.softmax(filter_logits(logits[i], p), dim=-1)
                out[i] = torch.multinomial(probs, 1, generator=generators[i])[0]
            except Exception as e:  # noqa: BLE001 - one row's failure is that request's, not the batch's
                errors[i] = SamplingError(f"sampling failed: {type(e).__name__}: {e}")
    tokens, finite = torch.stack([out, ok.long()]).tolist()
    return [errors[i] if i in errors else t if f else _not_finite() for i, (t, f) in enumerate(zip(tokens, finite))]


def verify_drafts(logits: torch.Tensor, drafts: list[int], params: list[SamplingParams],
                  generators: list[torch.Generator | None]) -> list[list[int] | SamplingError]:
    """Speculative decoding with one drafted token per row: logits [B, 2, V] of the verify step (position 0 scored
    the draft, position 1 follows it) -> the tokens each row emits, one or two (or a SamplingError for a row whose
    logits are not finite, as in sample_rows).

    Greedy rows accept the draft when it is the argmax, then add the argmax after it. Sampled rows accept it with
    probability p(draft) under the row's filtered distribution and otherwise draw from that distribution with the
    draft removed, renormalised: the drafter is deterministic, so this is the standard acceptance rule, and every
    emitted token has exactly the distribution plain sampling would give it.
    """
    B = logits.shape[0]
    ok, clean = _finite_rows(logits.reshape(B, -1))
    logits = clean.reshape(logits.shape)
    if all(p.greedy for p in params):  # one host transfer for the batch
        best = torch.cat([logits.argmax(-1), ok.long().unsqueeze(-1)], -1).tolist()
        return [([b0, b1] if b0 == d else [b0]) if f else _not_finite() for (b0, b1, f), d in zip(best, drafts)]
    finite = ok.tolist()
    out: list[list[int] | SamplingError] = []
    for i, (p, d) in enumerate(zip(params, drafts)):
        if not finite[i]:
            out.append(_not_finite())
        elif p.greedy:
            b0, b1 = logits[i].argmax(-1).tolist()
            out.append([b0, b1] if b0 == d else [b0])
        else:
            try:
                out.append(_verify_sampled(logits[i], d, p, generators[i]))
            except Exception as e:  # noqa: BLE001 - as in sample_rows
                out.append(SamplingError(f"sampling failed: {type(e).__name__}: {e}"))
    return out


def _verify_sampled(logits: torch.Tensor, d: int, p: SamplingParams, g: torch.Generator | None) -> list[int]:
    """One sampled row of verify_drafts: logits [2, V]."""
    probs = torch.softmax(filter_logits(logits[0], p), dim=-1)
    u = torch.rand((), generator=g, device=probs.device)
    if bool(u < probs[d]):
        nxt = torch.softmax(filter_logits(logits[1], p), dim=-1)
        return [d, int(torch.multinomial(nxt, 1, generator=g)[0])]
    rest = probs.clone()
    rest[d] = 0
    return [int(torch.multinomial(rest, 1, generator=g)[0])]  # multinomial renormalises
