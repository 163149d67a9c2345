"""A few generated tokens from a model in training, to show a person what it has learned.

Full recomputation each token (no cache): fine for a short sample from a small model; the serving engine
(turnout.serve) decodes on the absorbed MLA path with a latent cache.
"""

from __future__ import annotations

import torch

from turnout.backend import Backend
from turnout.data import Tokenizer


@torch.no_grad()
def sample_text(model: torch.nn.Module, tokenizer: Tokenizer, backend: Backend, prompt: str, max_new_tokens: int = 64,
                temperature: float = 0.8, top_k: int = 40, seed: int = 0, max_context: int = 256) -> str:
    """Continue `prompt` by sampling (temperature, top-k) with a private generator; returns the continuation."""
    was_training = model.training
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    ids = tokenizer.frame(tokenizer.encode(prompt)) or [tokenizer.eos_id]
    out: list[int] = []
    try:
        with backend.compute():
            for _ in range(max_new_tokens):
                ctx = torch.tensor([(ids + out)[-max_context:]], device=backend.device())
                logits = model(ctx)[0, -1].float().cpu()
                if temperature <= 0:
                    nxt = int(logits.argmax())
                else:
                    logits = logits / temperature
                    if top_k:
                        kth = torch.topk(logits, min(top_k, logits.numel())).values[-1]
                        logits = logits.masked_fill(logits < kth, float("-inf"))
                    nxt = int(torch.multinomial(torch.softmax(logits, -1), 1, generator=gen))
                if nxt in tokenizer.specials.stops:
                    break
                out.append(nxt)
    finally:
        model.train(was_training)
    return tokenizer.decode(out)
