"""Next-token cross-entropy over the output head: plain, or fused with the head matmul and chunked.

"fused" never materialises the [N, vocab] logits: per chunk of rows it computes logits, the loss and, when gradients
are wanted, the gradients of the head input and weight right away (softmax - onehot is all the backward needs), so
the logits stay in cache and the backward only returns the saved gradients. Same FLOPs as plain, less memory traffic.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cross_entropy(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100,
                  impl: str = "fused", chunk: int = 512) -> torch.Tensor:
    """Mean cross-entropy of logits h @ weight.T [N, vocab] against targets [N], in fp32, over non-ignored targets;
    0 (not NaN) when every target is ignored. h [N, dim], weight [vocab, dim]."""
    n = (targets != ignore_index).sum().clamp(min=1)
    if impl == "fused" and torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad):
        return _FusedLinearCrossEntropy.apply(h, weight, targets, n, ignore_index, chunk)
    if impl == "fused":  # no gradients wanted: just chunk the logits
        total = sum(_chunk(h[s:s + chunk], weight, targets[s:s + chunk], ignore_index, n, grad=False)[0]
                    for s in range(0, h.shape[0], chunk))
        return total / n
    logits = F.linear(h, weight).float()
    return F.cross_entropy(logits, targets, ignore_index=ignore_index, reduction="sum") / n


def _chunk(h, weight, targets, ignore_index, n, grad: bool):
    """(summed loss, and with grad the loss gradient of the logits (softmax - onehot) * valid / n) of one chunk.

    One logits buffer [C, vocab] is worked in place: max, exp(x - max), its sum, then scaled into the gradient."""
    logits = F.linear(h, weight).float()  # [C, vocab]
    valid = targets != ignore_index
    tgt = targets.clamp(min=0)
    picked = logits.gather(1, tgt.unsqueeze(1))  # [C, 1]
    top = logits.amax(dim=-1, keepdim=True)
    e = logits.sub_(top).exp_()  # exp(x - max)
    total = e.sum(dim=-1, keepdim=True)
    loss = ((top + total.log() - picked).squeeze(1) * valid).sum()  # logsumexp - picked
    if not grad:
        return loss, None
    w = valid.unsqueeze(1) / (n * total)  # [C, 1]
    g = e.mul_(w)  # softmax * valid / n
    g[torch.arange(len(tgt), device=g.device), tgt] -= w.squeeze(1) * total.squeeze(1)
    return loss, g


class _FusedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, weight, targets, n, ignore_index, chunk):
        grad_h = torch.empty_like(h) if h.requires_grad else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if weight.requires_grad else None
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        for s in range(0, h.shape[0], chunk):
            hs = h[s:s + chunk]
            # d(sum of losses)/d(logits) = softmax - onehot(target), zero on ignored rows; / n for the mean
            loss, g = _chunk(hs, weight, targets[s:s + chunk], ignore_index, n, grad=True)
            total += loss
            g = g.to(h.dtype)
            if grad_h is not None:
                grad_h[s:s + chunk] = g @ weight
            if grad_w is not None:
                grad_w.addmm_(g.t().float(), hs.float())
        ctx.save_for_backward(grad_h, grad_w.to(weight.dtype) if grad_w is not None else None)
        return total / n

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.saved_tensors
        return (grad_h * grad_out if grad_h is not None else None,
                grad_w * grad_out if grad_w is not None else None, None, None, None, None)


class Head(torch.nn.Linear):
    """Output projection [dim -> vocab]: `head(h)` gives logits, `head(h, targets)` the mean cross-entropy.

    The loss goes through the module's forward (not `head.weight` directly) so FSDP's hooks gather the weight.
    """

    def __init__(self, dim: int, vocab_size: int, ignore_index: int = -100, impl: str = "fused"):
        super().__init__(dim, vocab_size, bias=False)
        self.ignore_index, self.impl = ignore_index, impl

    def forward(self, h: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        if targets is None:
            return F.linear(h, self.weight)
        return cross_entropy(h.flatten(0, -2), self.weight, targets.flatten(), self.ignore_index, self.impl)
