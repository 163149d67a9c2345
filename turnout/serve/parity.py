"""Numerical parity of one model on two targets, measured on the serving path (absorbed MLA, latent cache).

Two measurements, both on held-out text (the run's validation split when the checkpoint's data can be prepared,
else `--text`, else the tail of the embedded corpus, which is the validation split of the default data):

  teacher-forced   S windows of T tokens through each target in one cached prefill; per position: max/mean abs
                   logit difference, the mean abs difference relative to the logits' own spread (mean |l - mean l|
                   over the vocabulary), KL(p_a || p_b) in float64, and whether the argmax agrees.
  greedy           P prompts of L tokens continued greedily for N tokens (eos ignored) by each target's Engine;
                   token agreement per position and the first position where the continuations differ.

`run_parity` returns the measurements; certificate.py turns them into a verdict and a certificate file.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from turnout.backend.spec import dtype_name
from turnout.ckpt import read_manifest
from turnout.config import from_dict
from turnout.data import DataError, load_shakespeare, prepare_dataset
from turnout.model import LatentCache
from turnout.serve.engine import Engine
from turnout.serve.loader import LoadedModel, load_for_serving
from turnout.serve.sampling import SamplingParams
from turnout.train.build import data_cache_dir
from turnout.train.fingerprint import numerics_fingerprint


@dataclass
class ParitySettings:
    """How much text parity reads (defaults: 4 x 128 teacher-forced tokens, 4 prompts x 32 greedy tokens)."""

    sequences: int = 4
    seq_len: int = 128
    prompts: int = 4
    prompt_len: int = 16
    new_tokens: int = 32


def heldout_tokens(lm: LoadedModel, text_file: str | Path | None = None, min_tokens: int = 0
                   ) -> tuple[np.ndarray, str]:
    """(token ids, where they came from) of held-out text for `lm`."""
    tok = lm.tokenizer
    if text_file is not None:
        text = Path(text_file).read_text(encoding="utf-8", errors="replace")
        return np.asarray(tok.encode(text), dtype=np.int64), f"file {Path(text_file).resolve()}"
    ident = lm.identity
    if ident.kind == "checkpoint":
        try:
            m = read_manifest(ident.folder)
            cfg = from_dict(m.config)
            ds = prepare_dataset(cfg.data.sources or None, vocab_size=lm.model.args.vocab_size,
                                 cache_dir=data_cache_dir(cfg), val_fraction=cfg.data.val_fraction,
                                 jsonl_field=cfg.data.jsonl_field, log=None)
            if ds.tokenizer == tok and len(ds.val_tokens) >= min_tokens:
                return np.asarray(ds.val_tokens, dtype=np.int64), f"validation split of {ds.path}"
        except Exception:  # noqa: BLE001 - data moved, or a config from another version: fall back
            pass
    # the embedded corpus's tail is the validation split of the default data ("tail" split)
    docs = list(load_shakespeare())
    chars, parts = max(4 * min_tokens, 20_000), []
    for d in reversed(docs):
        parts.insert(0, d.text)
        if sum(map(len, parts)) >= chars:
            break
    text = "".join(parts)[-chars:]
    return np.asarray(tok.encode(text), dtype=np.int64), "tail of the embedded Shakespeare corpus"


def windows(tokens: np.ndarray, count: int, length: int) -> torch.Tensor:
    """[count, length] evenly spaced windows of the token stream (shorter when the stream is)."""
    length = min(length, len(tokens))
    if length < 2:
        raise DataError(f"held-out text has {len(tokens)} tokens; parity needs at least 2")
    starts = np.linspace(0, len(tokens) - length, count).astype(np.int64)
    return torch.from_numpy(np.stack([tokens[s:s + length] for s in starts]))


@torch.inference_mode()
def teacher_forced_logits(lm: LoadedModel, tokens: torch.Tensor) -> torch.Tensor:
    """Logits [S, T, V] (fp32, CPU) of `tokens` [S, T] from one cached prefill on lm's target."""
    S, T = tokens.shape
    dev = lm.backend.device()
    with lm.backend.compute():
        cache = LatentCache(lm.model.args, S, T, device=dev, dtype=lm.dtype)
        logits = lm.model(tokens.to(dev), cache=cache, start_pos=0).float()
    lm.backend.synchronize()
    return logits.cpu()


def compare_logits(a: torch.Tensor, b: torch.Tensor) -> dict:
    """Differences between two logit tensors [..., V]."""
    a, b = a.double(), b.double()
    diff = (a - b).abs()
    spread = (a - a.mean(-1, keepdim=True)).abs().mean()
    la, lb = F.log_softmax(a, -1), F.log_softmax(b, -1)
    kl = (la.exp() * (la - lb)).sum(-1).clamp(min=0)  # [...]: tiny negatives are rounding
    finite = bool(torch.isfinite(a).all() and torch.isfinite(b).all())
    return {
        "positions": int(kl.numel()),
        "finite": finite,
        "max_abs_diff": float(diff.max()) if finite else float("inf"),
        "mean_abs_diff": float(diff.mean()) if finite else float("inf"),
        "logit_spread": float(spread),
        "rel_mean_abs_diff": float(diff.mean() / spread) if finite and spread > 0 else float("inf"),
        "mean_kl": float(kl.mean()) if finite else float("inf"),
        "max_kl": float(kl.max()) if finite else float("inf"),
        "top1_agreement": float((a.argmax(-1) == b.argmax(-1)).double().mean()),
    }


def greedy_continuations(lm: LoadedModel, prompts: torch.Tensor, new_tokens: int) -> list[list[int]]:
    """Greedy continuations (eos ignored) of each prompt [P, L], batched through lm's Engine."""
    P, L = prompts.shape
    engine = Engine(lm.model, lm.tokenizer, lm.backend, max_batch=P,
                    max_context=min(L + new_tokens + 1, lm.model.args.max_seq_len))
    params = SamplingParams(max_tokens=new_tokens, temperature=0.0, ignore_eos=True)
    handles = [engine.submit(p.tolist(), params) for p in prompts]
    engine.run()
    return [h.result().token_ids for h in handles]


def compare_greedy(a: list[list[int]], b: list[list[int]]) -> dict:
    firsts = []
    agree = total = 0
    for x, y in zip(a, b):
        n = min(len(x), len(y))
        same = [x[i] == y[i] for i in range(n)]
        agree += sum(same)
        total += max(len(x), len(y))
        firsts.append(None if all(same) and len(x) == len(y) else (same.index(False) if False in same else n))
    return {"prompts": len(a), "token_agreement": agree / max(total, 1),
            "identical": sum(f is None for f in firsts), "first_divergence": firsts}


def run_parity(model: str | Path, a: str, b: str, *, model_b: str | Path | None = None,
               trained_on: str | None = None, text_file: str | Path | None = None,
               settings: ParitySettings = ParitySettings(), log=print) -> dict:
    """Load the model on targets a and b (the weights at `model_b` on b when given) and measure both ways.

    Returns the measurement part of a certificate: model identities, text, teacher_forced and greedy."""
    log = log or (lambda _m: None)
    lm_a = load_for_serving(model, a, trained_on=trained_on)
    lm_b = load_for_serving(model_b or model, b, trained_on=trained_on if model_b is None else None)
    if lm_a.tokenizer != lm_b.tokenizer:
        log("parity: warning: the two models have different tokenizers; comparing token ids as they are")
    s = settings
    need = max(s.sequences * s.seq_len, s.prompts * (s.prompt_len + s.new_tokens))
    tokens, source = heldout_tokens(lm_a, text_file, need)
    log(f"parity: {lm_a.identity.name} on {lm_a.backend.name} ({_dt(lm_a)}) vs "
        f"{lm_b.identity.name} on {lm_b.backend.name} ({_dt(lm_b)}); text: {source} ({len(tokens):,} tokens)")
    seqs = windows(tokens, s.sequences, s.seq_len)
    tf = compare_logits(teacher_forced_logits(lm_a, seqs), teacher_forced_logits(lm_b, seqs))
    prompts = windows(tokens, s.prompts, s.prompt_len)
    greedy = compare_greedy(greedy_continuations(lm_a, prompts, s.new_tokens),
                            greedy_continuations(lm_b, prompts, s.new_tokens))
    greedy.update(prompt_tokens=prompts.shape[1], new_tokens=s.new_tokens)

    return parity_report(model, lm_a, local_side(lm_a), local_side(lm_b), source, seqs, s, tf, greedy)


def parity_report(model: str | Path, lm: LoadedModel, a: dict, b: dict, source: str, seqs: torch.Tensor,
                  settings: ParitySettings, teacher_forced: dict, greedy: dict) -> dict:
    """The measurement part of a certificate: the model as `lm` loaded it, the two sides, the text (`seqs` the
    teacher-forced windows), the settings and both measurements."""
    i = lm.identity
    return {
        "model": {"path": str(Path(model).resolve()), "name": i.name, "kind": i.kind, "sha256": i.sha256,
                  "trained_on": i.trained_on},
        "a": a,
        "b": b,
        "text": {"source": source, "sequences": int(seqs.shape[0]), "seq_len": int(seqs.shape[1]),
                 "tokens": int(seqs.numel())},
        "settings": asdict(settings),
        "teacher_forced": teacher_forced,
        "greedy": greedy,
    }


def local_side(lm: LoadedModel) -> dict:
    """What a certificate records of a side run in this process."""
    i = lm.identity
    return {"target": lm.backend.name, "dtype": _dt(lm), "device": lm.backend.device_name(),
            "model": str(i.folder), "kind": i.kind, "sha256": i.sha256,
            "fingerprint": numerics_fingerprint(lm.model, lm.backend, _dt(lm))}


def _dt(lm: LoadedModel) -> str:
    return dtype_name(lm.dtype)
