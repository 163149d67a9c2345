"""Parity between a model on a local target and an OpenAI-compatible server said to serve the same weights.

The server shows only a top-K view of each distribution (echo + prompt logprobs), so the teacher-forced numbers
are computed on what both sides know at each position: the set S of token ids the server named (its top K and
the prompt's own token). With p the reference side's distribution and q the other's:

  top1_agreement     the server's likeliest named token is the local argmax (its top K hold its argmax).
  mean_kl / max_kl   a LOWER BOUND on KL(p || q): the KL of the two distributions coarse-grained to S plus one
                     "rest" outcome, sum_S p log(p/q) + r_p log(r_p/r_q) with r = 1 - sum_S. Coarse-graining never
                     raises a KL (data processing), and the gap is r_p x KL(p | rest || q | rest), the mismatch
                     inside the tail weighted by the tail's mass; `tail_mass` reports r of the local side, so a
                     near-uniform model (most of its mass outside any top 20) says how little the bound covers.
  rel_mean_abs_diff  mean |log p - log q| over S, relative to the local logits' spread (mean |l - mean l| over the
                     whole vocabulary), the same scale the in-process rule uses; logprobs differ from logits by a
                     per-position constant, which bf16-level noise moves far less than the tokens themselves.

Before any of that, the tokenizer check: the server tokenizes a held-out text and must produce the model's own ids
(turnout's framing included: a bos the model's tokenizer adds), or the certificate fails on it. Greedy
continuations (token ids in, temperature 0, eos ignored) are reported as in-process parity reports them.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from turnout.data import Tokenizer
from turnout.serve.endpoint import Endpoint, EndpointError, Scored, is_endpoint
from turnout.serve.loader import LoadedModel, load_for_serving
from turnout.serve.parity import (ParitySettings, compare_greedy, greedy_continuations, heldout_tokens,
                                  local_side, parity_report, teacher_forced_logits, windows)

TOKENIZER_TEXT_TOKENS = 256  # held-out tokens whose text the server must tokenize as the model does


def tokenizer_check(endpoint: Endpoint, tok: Tokenizer, ids: list[int]) -> dict:
    """Does the server turn the text of `ids` into the model's own token ids?"""
    text = tok.decode(ids)
    want = tok.frame(tok.encode(text))
    got = endpoint.tokenize(text)
    at = next((i for i, (g, w) in enumerate(zip(got, want)) if w not in g), None)
    if at is None and len(got) != len(want):
        at = min(len(got), len(want))
    out = {"tokens": len(want), "endpoint_tokens": len(got), "ok": at is None, "first_difference": at}
    if at is not None:
        out["reason"] = (f"the endpoint's tokenizer differs from the model's: at token {at} it has "
                         f"{sorted(got[at]) if at < len(got) else 'nothing'}, the model "
                         f"{want[at] if at < len(want) else 'nothing'}")
    return out


def compare_topk(logits: torch.Tensor, scored: list[list[Scored]], local_is_a: bool) -> dict:
    """logits [S, T, V] of the local side, scored[s] the server's view of window s (T + 1 positions) -> the
    teacher-forced numbers (see the module doc); KL is KL(a || b) with a the reference side."""
    lp = torch.log_softmax(logits.double(), -1)  # [S, T, V]
    spread = float((logits.double() - logits.double().mean(-1, keepdim=True)).abs().mean())
    finite = bool(torch.isfinite(logits).all())
    kls, diffs, tails, agree, known = [], [], [], 0, 0
    for s, view in enumerate(scored):
        for t in range(lp.shape[1]):
            top = view[t + 1].top  # the server's distribution after t + 1 tokens
            if not top:
                continue
            ids = torch.tensor(list(top))
            q_local = lp[s, t, ids]  # [K]
            q_end = torch.tensor(list(top.values()), dtype=torch.float64)
            finite = finite and bool(torch.isfinite(q_end).all())
            la, lb = (q_local, q_end) if local_is_a else (q_end, q_local)
            pa, pb = la.exp(), lb.exp()
            ra, rb = max(1 - float(pa.sum()), 0.0), max(1 - float(pb.sum()), 0.0)
            rest = ra * math.log(max(ra, 1e-300) / max(rb, 1e-300)) if ra > 1e-12 else 0.0
            kls.append(max(float((pa * (la - lb)).sum()) + rest, 0.0))
            diffs.append((la - lb).abs())
            tails.append(1 - float(q_local.exp().sum()))
            agree += int(max(top, key=top.get) == int(lp[s, t].argmax()))
            known += len(top)
    if not kls:
        raise EndpointError("the endpoint named none of the tokens at any position; nothing to compare")
    d = torch.cat(diffs)
    n = len(kls)
    return {
        "view": "top-k logprobs", "positions": n, "known_per_position": known / n, "finite": finite,
        "max_abs_diff": float(d.max()) if finite else float("inf"),
        "mean_abs_diff": float(d.mean()) if finite else float("inf"),
        "logit_spread": spread,
        "rel_mean_abs_diff": float(d.mean()) / spread if finite and spread > 0 else float("inf"),
        "mean_kl": sum(kls) / n if finite else float("inf"), "max_kl": max(kls) if finite else float("inf"),
        "kl_is_lower_bound": True, "tail_mass": sum(tails) / n,
        "top1_agreement": agree / n,
    }


def run_endpoint_parity(model: str | Path, a: str, b: str, *, trained_on: str | None = None,
                        text_file: str | Path | None = None, settings: ParitySettings = ParitySettings(),
                        endpoint_model: str | None = None, top_logprobs: int = 20, endpoint_dtype: str = "fp32",
                        log=print) -> dict:
    """`model` on the local one of targets a and b against the server the other names (`openai:URL`).

    Returns the measurement part of a certificate, as run_parity does, with the endpoint's side and the tokenizer
    check; raises EndpointError when the server is down, serves several models and none is named, or gives no
    logprobs."""
    log = log or (lambda _m: None)
    if is_endpoint(a) == is_endpoint(b):
        raise EndpointError("parity compares a local target with one endpoint (openai:URL); compare each endpoint "
                            "against a local target")
    local_is_a = is_endpoint(b)
    lm: LoadedModel = load_for_serving(model, a if local_is_a else b, trained_on=trained_on)
    endpoint = Endpoint(b if local_is_a else a, lm.tokenizer, model=endpoint_model)
    s = settings
    need = max(s.sequences * s.seq_len, s.prompts * (s.prompt_len + s.new_tokens), TOKENIZER_TEXT_TOKENS)
    tokens, source = heldout_tokens(lm, text_file, need)
    log(f"parity: {lm.identity.name} on {lm.backend.name} vs model {endpoint.model!r} at {endpoint.base}; text: "
        f"{source} ({len(tokens):,} tokens)")
    tok_check = tokenizer_check(endpoint, lm.tokenizer, tokens[:TOKENIZER_TEXT_TOKENS].tolist())
    if not tok_check["ok"]:
        log(f"parity: {tok_check['reason']}")
    seqs = windows(tokens, s.sequences, s.seq_len)
    scored = [endpoint.score(row.tolist(), top_logprobs) for row in seqs]
    tf = compare_topk(teacher_forced_logits(lm, seqs), scored, local_is_a)
    tf["top_logprobs"] = top_logprobs
    prompts = windows(tokens, s.prompts, s.prompt_len)
    local = greedy_continuations(lm, prompts, s.new_tokens)
    remote = [endpoint.greedy(p.tolist(), s.new_tokens) for p in prompts]
    greedy = compare_greedy(*((local, remote) if local_is_a else (remote, local)))
    greedy.update(prompt_tokens=prompts.shape[1], new_tokens=s.new_tokens)
    here = local_side(lm)
    there = endpoint.describe() | {"dtype": endpoint_dtype, "tokenizer_check": tok_check}
    a_side, b_side = (here, there) if local_is_a else (there, here)
    return parity_report(model, lm, a_side, b_side, source, seqs, s, tf, greedy) | {"tokenizer": tok_check}
