"""Smoke test: `python -m turnout.model [preset]` builds a model, runs a loss and a cached decode, prints shapes."""

import sys

import torch

from .args import ModelArgs
from .cache import LatentCache
from .flops import flops_per_token, param_counts
from .transformer import Transformer


def main(name: str = "debug"):
    args = ModelArgs.preset(name)
    total, active = param_counts(args)
    print(f"preset {name}: {total / 1e6:.2f}M params, {active / 1e6:.2f}M active, "
          f"{flops_per_token(args, 64) / 1e6:.1f} MFLOP/token (train, T=64)")
    torch.manual_seed(0)
    model = Transformer(args)
    tokens = torch.randint(0, args.vocab_size, (2, 64))
    out = model(tokens[:, :-1], targets=tokens[:, 1:], return_logits=True)
    print(f"logits {tuple(out.logits.shape)}  loss {out.loss.item():.4f} (ce {out.ce.item():.4f}, "
          f"mtp {out.mtp.item():.4f}, balance {out.balance.item():.4f})")
    model.eval()
    cache = LatentCache(args, max_batch=2, max_seq=64)
    with torch.no_grad():
        model(tokens[:, :32], cache=cache, start_pos=0)
        step = model(tokens[:, 32:33], cache=cache, start_pos=32)
    print(f"decode logits {tuple(step.shape)}  cache {cache.bytes_per_token} bytes/token  "
          f"expert loads {tuple(model.expert_loads().shape)}")


if __name__ == "__main__":
    main(*sys.argv[1:])
