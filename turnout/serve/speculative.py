"""Speculative decoding with the model's own MTP module as the drafter (DeepSeek-V3 paper, section 5.4.3).

Each step feeds every running row two tokens: its newest token and the MTP module's guess for the one after
(`draft`). One main-model forward scores both positions; `verify_drafts` keeps the draft when it is what the
main model would have produced (greedy) or by the acceptance rule (sampling), so a step emits one or two tokens
and the output is exactly what plain decoding gives. The MTP module then reads the new main hidden states (one
per emitted token) from its own cache layer and drafts the next guess.

Cache rows stay consistent without rollback: a rejected draft leaves junk at one position past the row's length in
both the main and the MTP cache layer, and the row's next step writes that position before any query can see it
(the same invariant ragged prefill relies on, see model/cache.py).
"""

from __future__ import annotations

import torch

from turnout.model import LatentCache, Transformer
from turnout.serve.sampling import SamplingError, SamplingParams, sample_rows, verify_drafts


@torch.inference_mode()
def prefill(model: Transformer, cache: LatentCache, prompt: list[int], slot: int, params: SamplingParams,
            generator: torch.Generator | None) -> tuple[int, int, torch.Tensor]:
    """Prefill one row (main and MTP cache layers): -> (first generated token, draft of the token after it, the
    prompt's logits [1, P, V])."""
    device = cache.kv.device
    tokens = torch.tensor([prompt], device=device)
    logits, hidden = model(tokens, cache=cache, start_pos=0, slots=[slot], return_hidden=True)
    (tok,) = sample_rows(logits[:, -1].float(), [params], [generator])
    if isinstance(tok, SamplingError):
        raise tok
    following = torch.tensor([prompt[1:] + [tok]], device=device)  # the token after each prompt position
    last = torch.tensor([len(prompt) - 1], device=device)
    draft = model.draft(hidden, following, cache=cache, start_pos=0, slots=[slot], last=last)[0].argmax()
    return tok, int(draft), logits


@torch.inference_mode()
def step(model: Transformer, cache: LatentCache, last: list[int], drafts: list[int], starts: list[int],
         slots: list[int], params: list[SamplingParams],
         generators: list[torch.Generator | None]
         ) -> tuple[list[list[int] | SamplingError], list[int], torch.Tensor]:
    """One verify step for B rows at their own positions -> (tokens each row emits (1 or 2, or the SamplingError of
    a row that could not be sampled), each row's next draft, the logits [B, 2, V]: emitted token k of row b was
    drawn from row b's position k).

    Row b feeds [last[b], drafts[b]] at positions starts[b], starts[b] + 1 of cache row slots[b].
    """
    device = cache.kv.device
    tokens = torch.tensor([[t, d] for t, d in zip(last, drafts)], device=device)  # [B, 2]
    logits, hidden = model(tokens, cache=cache, start_pos=starts, slots=slots, return_hidden=True)
    emitted = verify_drafts(logits.float(), drafts, params, generators)
    # MTP input: position starts[b] is followed by the first emitted token, starts[b] + 1 by the second (a
    # rejected row's second entry is junk, overwritten next step; a failed row, which retires now, drafts from 0)
    toks = [[0] if isinstance(e, SamplingError) else e for e in emitted]
    following = torch.tensor([[e[0], e[-1]] for e in toks], device=device)  # [B, 2]
    newest = torch.tensor([len(e) - 1 for e in toks], device=device)  # the position after the newest token
    new_drafts = model.draft(hidden, following, cache=cache, start_pos=starts, slots=slots, last=newest).argmax(-1)
    return emitted, new_drafts.tolist(), logits
